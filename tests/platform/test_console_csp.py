"""The console's CSP lets the browser reach the public Solana RPC, and nothing more of it."""

from __future__ import annotations

from tesai.middleware import DEFAULT_CSP, console_csp
from tesai.settings import Settings


def test_connect_src_names_the_public_rpc_origin_only() -> None:
    s = Settings(solana_public_rpc_url="https://user:secret@rpc.example.com/v1/KEY?api-key=x")
    assert "connect-src 'self' https://rpc.example.com;" in console_csp(s)
    assert "secret" not in console_csp(s)
    assert "KEY" not in console_csp(s)
    public = s.model_copy(update={"solana_public_rpc_url": "http://127.0.0.1:8899"})
    assert "connect-src 'self' http://127.0.0.1:8899;" in console_csp(public)


def test_a_private_rpc_url_is_never_handed_to_browsers() -> None:
    """The server's own RPC URL often carries an API key: browsers get it only when it is one
    of Solana's public endpoints (or this machine); otherwise wallet payments are off."""
    for private in (
        "https://solana-mainnet.g.alchemy.com/v2/KEY",
        "https://rpc.example.com/?api-key=KEY",
        "https://user:KEY@api.mainnet-beta.solana.com",
    ):
        s = Settings(solana_rpc_url=private)
        assert s.public_solana_rpc_url == ""
        assert console_csp(s) == DEFAULT_CSP
    s = Settings(solana_rpc_url="https://api.devnet.solana.com")
    assert s.public_solana_rpc_url == "https://api.devnet.solana.com"
    assert "connect-src 'self' https://api.devnet.solana.com;" in console_csp(s)


def test_a_chain_url_that_is_not_http_adds_nothing() -> None:
    assert console_csp(Settings(solana_rpc_url="litesvm://abc")) == DEFAULT_CSP

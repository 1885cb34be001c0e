"""Which chain client a process uses, chosen by ``solana_rpc_url``.

One client per URL per process. Tests and local runs install a ``LiteSVMChainClient``
under a URL of their own (``litesvm://…``) so the API and the tasks of that process use it.
"""

from __future__ import annotations

from tesai.chain.base import ChainClient
from tesai.chain.rpc import RpcChainClient
from tesai.settings import Settings

_clients: dict[str, ChainClient] = {}


def install_chain_client(url: str, client: ChainClient) -> None:
    """Use ``client`` for every caller whose settings name ``url``."""
    _clients[url] = client


def remove_chain_client(url: str) -> None:
    _clients.pop(url, None)


def chain_client(settings: Settings) -> ChainClient:
    """The process's client for ``settings.solana_rpc_url`` (an RPC client unless installed)."""
    url = settings.solana_rpc_url
    client = _clients.get(url)
    if client is None:
        if url.startswith("litesvm://"):
            raise RuntimeError(f"no LiteSVM chain client installed for {url}")
        client = RpcChainClient(
            url, commitment="confirmed", timeout_s=settings.solana_rpc_timeout_s
        )
        _clients[url] = client
    return client

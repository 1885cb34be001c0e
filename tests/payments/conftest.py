"""Money test fixtures: users (shared with tests/billing) and a real Solana runtime."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction

from tesai.chain.factory import install_chain_client, remove_chain_client
from tesai.chain.litesvm import LiteSVMChainClient, transfer_checked_ix
from tesai.settings import Settings
from tests.billing.conftest import new_user

__all__ = ["Chain", "chain", "money_settings", "new_user"]


@dataclass
class Chain:
    client: LiteSVMChainClient
    authority: Keypair
    usdc: Pubkey
    treasury: Keypair
    treasury_ata: Pubkey
    hot: Keypair
    hot_ata: Pubkey
    url: str

    def wallet(self, usdc: int = 0) -> tuple[Keypair, Pubkey]:
        owner = Keypair()
        self.client.fund(owner.pubkey())
        ata = self.client.create_token_account(self.authority, owner.pubkey(), self.usdc)
        if usdc:
            self.client.mint_to(self.authority, self.usdc, ata, usdc)
        return owner, ata

    def pay(
        self, payer: Keypair, source: Pubkey, dest: str, mint: Pubkey, amount: int, ref: str
    ) -> str:
        ix = transfer_checked_ix(
            source=source,
            mint=mint,
            destination=Pubkey.from_string(dest),
            owner=payer.pubkey(),
            amount=amount,
            decimals=6,
            references=[Pubkey.from_string(ref)],
        )
        tx = Transaction([payer], Message([ix], payer.pubkey()), self.client.svm.latest_blockhash())
        result = self.client.submit(tx)
        assert result.error is None, result.error
        return result.signature


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    client = LiteSVMChainClient()
    authority = Keypair()
    client.fund(authority.pubkey())
    usdc = client.create_mint(authority)
    treasury, hot = Keypair(), Keypair()
    treasury_ata = client.create_token_account(authority, treasury.pubkey(), usdc)
    client.fund(hot.pubkey())
    hot_ata = client.create_token_account(authority, hot.pubkey(), usdc)
    client.mint_to(authority, usdc, hot_ata, 1_000_000_000)
    url = f"litesvm://{secrets.token_hex(4)}"
    install_chain_client(url, client)
    (tmp_path / "hot.json").write_text(json.dumps(list(bytes(hot))))
    yield Chain(client, authority, usdc, treasury, treasury_ata, hot, hot_ata, url)
    remove_chain_client(url)


@pytest.fixture
def money_settings(settings: Settings, chain: Chain, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "solana_rpc_url": chain.url,
            "usdc_mint": str(chain.usdc),
            "treasury_owner": str(chain.treasury.pubkey()),
            "treasury_token_account": str(chain.treasury_ata),
            "hot_wallet_key_file": tmp_path / "hot.json",
            "min_payout_micro": 1_000_000,
        }
    )

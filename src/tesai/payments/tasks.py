"""Periodic payment work: scan deposit references, send and confirm payouts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tesai.chain.factory import chain_client
from tesai.payments.deposits import scan_deposits
from tesai.payments.payouts import process_payouts
from tesai.settings import get_settings
from tesai.tasks import TaskContext, periodic

_settings = get_settings()


@periodic("payments.scan_deposits", every_s=_settings.deposit_scan_interval_s)
async def scan_deposits_task(ctx: TaskContext) -> dict[str, Any]:
    """Credit confirmed Solana Pay transfers, once per signature."""
    if not ctx.settings.treasury_token_account:
        return {"skipped": "no treasury configured"}
    report = await scan_deposits(ctx.sessionmaker, ctx.settings, chain_client(ctx.settings))
    return asdict(report)


@periodic("payments.process_payouts", every_s=_settings.payout_interval_s)
async def process_payouts_task(ctx: TaskContext) -> dict[str, Any]:
    """Send pending payouts from the hot wallet and settle the sent ones."""
    if ctx.settings.hot_wallet_key_file is None:
        return {"skipped": "no hot wallet configured"}
    report = await process_payouts(ctx.sessionmaker, ctx.settings, chain_client(ctx.settings))
    return asdict(report)

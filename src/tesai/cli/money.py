"""Money commands: `tesai balance`, `tesai deposit`, `tesai usage`, `tesai payout`.

All go through the HTTP API with the stored login (`tesai login`); money-moving commands
send an ``Idempotency-Key`` (a fresh one, or ``--idempotency-key`` to retry safely).
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.table import Table

from tesai.cli.common import JsonOpt, console, dumps, err
from tesai.cli.common import call as _call

KeyOpt = Annotated[
    str | None,
    typer.Option("--idempotency-key", help="Reuse to retry a request safely (default: a new one)."),
]


def usdc(micro: int) -> str:
    return f"{micro / 1_000_000:,.6f} USDC"


def to_micro(amount: float) -> int:
    micro = round(amount * 1_000_000)
    if micro <= 0:
        err.print("[red]The amount must be positive[/]")
        raise typer.Exit(2)
    return micro


def balance(json_out: JsonOpt = False) -> None:
    """Your available and held funds."""
    data = _call("GET", "/api/v1/customer/balance")
    if json_out:
        typer.echo(dumps(data))
        return
    console.print(f"available: [bold]{usdc(data['available_micro'])}[/]")
    console.print(f"held for clusters: {usdc(data['held_micro'])}")
    for ref, micro in sorted(data["holds"].items()):
        console.print(f"  {ref}: {usdc(micro)}")


def deposit(
    amount: Annotated[float, typer.Option("--amount", help="USDC to deposit.")],
    idempotency_key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask for a Solana Pay request; pay it from your wallet (URL or QR)."""
    data = _call(
        "POST",
        "/api/v1/customer/deposits",
        json={"amount_micro": to_micro(amount)},
        headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
    )
    if json_out:
        typer.echo(dumps(data))
        return
    console.print(f"Pay {usdc(data['amount_micro'])} with any Solana Pay wallet:")
    console.print(data["url"], soft_wrap=True)
    console.print(f"deposit {data['id']} — credited once the transfer is final.")


def usage(json_out: JsonOpt = False) -> None:
    """Metered seconds and cost per cluster node."""
    rows = _call("GET", "/api/v1/customer/usage")
    if json_out:
        typer.echo(dumps(rows))
        return
    table = Table("cluster", "node", "seconds", "price/h", "amount", "settled")
    for r in rows:
        table.add_row(
            str(r["cluster_id"])[:8],
            str(r["node_id"])[:8],
            str(r["seconds"]),
            usdc(r["price_per_hour_micro"]),
            usdc(r["amount_micro"]),
            usdc(r["settled_micro"]),
        )
    console.print(table)


def payout(
    amount: Annotated[float, typer.Option("--amount", help="USDC to withdraw.")],
    idempotency_key: KeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Withdraw earnings to your registered payout wallet."""
    data = _call(
        "POST",
        "/api/v1/provider/payouts",
        json={"amount_micro": to_micro(amount)},
        headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())},
    )
    if json_out:
        typer.echo(dumps(data))
        return
    console.print(f"payout {data['id']}: {usdc(data['amount_micro'])} → {data['destination']}")
    console.print(f"status: {data['status']} (sent and confirmed in the background)")


def register(app: typer.Typer) -> None:
    """Add the money commands to the `tesai` command."""
    app.command()(balance)
    app.command()(deposit)
    app.command()(usage)
    app.command()(payout)

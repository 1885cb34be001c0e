"""`tesai notifications` (list, `--unread`, `read ID`, `read-all`) and `tesai spend-cap`
(show, `set AMOUNT_USDC`, `clear`), over the HTTP API with the stored login."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tesai.cli.common import JsonOpt, call, console, dumps, err
from tesai.cli.money import usdc

notifications_app = typer.Typer(
    help="Your notifications: spend warnings, clusters stopped.", invoke_without_command=True
)
spend_cap_app = typer.Typer(
    help="Your monthly spend cap: show it, `set AMOUNT_USDC` or `clear`.",
    invoke_without_command=True,
)


@notifications_app.callback()
def notifications(
    ctx: typer.Context,
    unread: Annotated[bool, typer.Option("--unread", help="Only unread ones.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """List your notifications, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    page = call(
        "GET",
        "/api/v1/notifications",
        params={"unread": str(unread).lower(), "limit": limit},
    )
    if json_out:
        typer.echo(dumps(page))
        return
    if not page["items"]:
        console.print("No unread notifications." if unread else "No notifications.")
        return
    table = Table("id", "when (UTC)", "severity", "message", "read")
    for n in page["items"]:
        colour = {"critical": "red", "warning": "yellow"}.get(n["severity"], "white")
        table.add_row(
            str(n["id"]),
            str(n["created_at"])[:19].replace("T", " "),
            f"[{colour}]{n['severity']}[/]",
            n["message"],
            "yes" if n["read_at"] else "",
        )
    console.print(table)
    console.print(f"{page['unread']} unread")


@notifications_app.command("read")
def read(
    notification_id: Annotated[int, typer.Argument(help="The notification's id.", min=1)],
) -> None:
    """Mark one notification read."""
    n = call("POST", f"/api/v1/notifications/{notification_id}/read")
    console.print(f"notification {n['id']} marked read")


@notifications_app.command("read-all")
def read_all() -> None:
    """Mark every unread notification read."""
    data = call("POST", "/api/v1/notifications/read-all")
    console.print(f"{data['marked']} marked read")


def _print_cap(data: dict[str, object], json_out: bool) -> None:
    if json_out:
        typer.echo(dumps(data))
        return
    cap = data["monthly_cap_micro"]
    spent = int(str(data["month_to_date_micro"]))
    held = int(str(data["open_holds_micro"]))
    if cap is None:
        console.print(f"monthly spend cap: [bold]none[/] ({data['period']})")
    else:
        console.print(
            f"monthly spend cap: [bold]{usdc(int(str(cap)))}[/] ({data['period']}, "
            f"{data['used_pct']} % used)"
        )
    console.print(f"spent this month: {usdc(spent)}")
    console.print(f"open holds: {usdc(held)}")


@spend_cap_app.callback()
def spend_cap(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show your monthly spend cap and what counts against it."""
    if ctx.invoked_subcommand is None:
        _print_cap(call("GET", "/api/v1/customer/spend-cap"), json_out)


@spend_cap_app.command("set")
def set_cap(
    amount: Annotated[float, typer.Argument(help="The cap in USDC per calendar month (UTC).")],
    json_out: JsonOpt = False,
) -> None:
    """Set the monthly spend cap: clusters stop when it is reached, larger holds are refused."""
    micro = round(amount * 1_000_000)
    if micro <= 0:
        err.print("[red]The cap must be positive (use `tesai spend-cap clear` to remove it)[/]")
        raise typer.Exit(2)
    _print_cap(
        call("PUT", "/api/v1/customer/spend-cap", json={"monthly_cap_micro": micro}), json_out
    )


@spend_cap_app.command("clear")
def clear_cap(json_out: JsonOpt = False) -> None:
    """Remove the monthly spend cap."""
    _print_cap(call("DELETE", "/api/v1/customer/spend-cap"), json_out)


def register(app: typer.Typer) -> None:
    """Add `tesai notifications` and `tesai spend-cap` to the `tesai` command."""
    app.add_typer(notifications_app, name="notifications")
    app.add_typer(spend_cap_app, name="spend-cap")

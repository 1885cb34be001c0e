"""`tesai report NAME`: an analytics report as a table, JSON, CSV or Parquet.

Admin reports go through ``/api/v1/internal/analytics`` with the stored login; ``--public``
reads ``/api/v1/public/analytics`` (no login needed with ``--server``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from tesai.cli.common import console, dumps, err

NAMES = (
    "supply_demand", "utilisation", "price_index", "cluster_outcomes",
    "revenue", "provider_earnings", "provider_reliability", "mtbf",
)  # fmt: skip
"""Report names (the first four are public)."""

OutFormat = Literal["table", "json", "csv", "parquet"]


def _cell(col: str, value: Any) -> str:
    if value is None:
        return "—"
    if col.endswith("_micro") and isinstance(value, int):
        return f"{value / 1_000_000:,.2f}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(data: dict[str, Any]) -> Table:
    """The report as a rich table; ``*_micro`` columns shown in USDC."""
    table = Table(
        title=f"{data['report']} · {data['since']} → {data['until']} · per {data['grain']}"
    )
    for col in data["columns"]:
        label = col.removesuffix("_micro") + " (USDC)" if col.endswith("_micro") else col
        numeric = any(isinstance(r.get(col), int | float) for r in data["rows"])
        table.add_column(label, justify="right" if numeric else "left")
    for row in data["rows"]:
        table.add_row(*(_cell(c, row.get(c)) for c in data["columns"]))
    return table


def report(
    name: Annotated[str, typer.Argument(help="One of: " + ", ".join(NAMES))],
    since: Annotated[datetime | None, typer.Option(help="Start (UTC); default 7 days ago.")] = None,
    until: Annotated[datetime | None, typer.Option(help="End (UTC); default now.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this GPU model (cpu for CPU).")] = None,
    region: Annotated[str | None, typer.Option(help="Only this region.")] = None,
    grain: Annotated[str | None, typer.Option(help="hour or day (default by window).")] = None,
    limit: Annotated[int | None, typer.Option(help="Most rows of a leaderboard.")] = None,
    fmt: Annotated[OutFormat, typer.Option("--format", help="Output format.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write to this file.")] = None,
    public: Annotated[bool, typer.Option(help="Use the public endpoint.")] = False,
    server: Annotated[str | None, typer.Option(help="Server URL (default: stored login).")] = None,
) -> None:
    """Print an analytics report (market, money, reliability) from the rollups."""
    if fmt == "parquet" and output is None:
        err.print("[red]--format parquet needs --output FILE[/]")
        raise typer.Exit(2)
    params: dict[str, Any] = {
        k: v
        for k, v in {
            "since": since.isoformat() + ("" if since.tzinfo else "Z") if since else None,
            "until": until.isoformat() + ("" if until.tzinfo else "Z") if until else None,
            "model": model,
            "region": region,
            "grain": grain,
            "limit": limit,
            "format": fmt if fmt in ("csv", "parquet") else None,
        }.items()
        if v is not None
    }
    base = "/api/v1/public/analytics" if public else "/api/v1/internal/analytics"
    # Imported here for start-up cost (see tesai.cli), not to dodge an import cycle.
    from tesai.client import ApiError, NotLoggedIn, TesaiClient

    try:
        with TesaiClient(server) if server else TesaiClient() as client:
            if fmt in ("csv", "parquet"):
                with client.stream("GET", f"{base}/{name}", params=params) as response:
                    body = response.read()
                if output is None:
                    typer.echo(body.decode(), nl=False)
                else:
                    output.write_bytes(body)
                    err.print(f"wrote {output} ({len(body):,} bytes)")
                return
            data = client.get(f"{base}/{name}", params=params)
    except NotLoggedIn as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    except ApiError as exc:
        err.print(f"[red]{exc.status} {exc.code}[/]: {exc.detail}")
        raise typer.Exit(1) from exc
    if fmt == "json":
        text = dumps(data)
        if output is None:
            typer.echo(text)
        else:
            output.write_text(text)
        return
    console.print(render_table(data))


def register(app: typer.Typer) -> None:
    app.command("report")(report)

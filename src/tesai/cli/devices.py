"""Provider commands: `tesai device add|list|show|events|price|disable|enable|remove|rotate`.

All go through the HTTP API with the stored login (`tesai login`). Listings take ``--json``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from tesai.cli.common import JsonOpt, console, dumps
from tesai.cli.common import call as _call

app = typer.Typer(help="Connect and manage your machines (provider).", no_args_is_help=True)

BASE = "/api/v1/provider/devices"


def _usd(micro: int | None) -> str:
    return "-" if micro is None else f"${micro / 1_000_000:,.2f}"


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h" if minutes < 48 * 60 else f"{minutes // 1440} d"


def _uptime(pct: float | None, created_at: str) -> str:
    """Uptime with what it was measured over: 30 days, or the device's life if shorter."""
    if pct is None:
        return "uptime: not measured yet"
    age = time.time() - datetime.fromisoformat(created_at).timestamp()
    return f"uptime over {_age(min(age, 30 * 86400))}: {pct:.2f} %"


def _print_join(data: dict[str, Any]) -> None:
    console.print(f"Run this on the machine (works once, until {data['expires_at']}):")
    # Printed plain so it copies cleanly.
    typer.echo(data["join_command"])


@app.command("add")
def add(
    name: Annotated[str, typer.Option("--name", help="A name you recognise the machine by.")],
    price: Annotated[
        float | None, typer.Option("--price", help="USD per GPU-hour (per hour on CPU devices).")
    ] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    country: Annotated[
        str | None, typer.Option("--country", help="ISO 3166 code, e.g. DE.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a device and print the one-time command that connects its agent."""
    body: dict[str, Any] = {"name": name, "region": region, "country": country}
    if price is not None:
        body["price_per_gpu_hour_micro"] = round(price * 1_000_000)
    data = _call("POST", BASE, json=body)
    if as_json:
        typer.echo(dumps(data))
        return
    console.print(f"Device [bold]{data['device']['name']}[/] created: {data['device']['id']}")
    _print_join(data)


@app.command("list")
def list_devices(as_json: JsonOpt = False) -> None:
    """Your devices, their state and why."""
    devices = _call("GET", BASE)
    if as_json:
        typer.echo(dumps(devices))
        return
    table = Table("id", "name", "status", "reason", "hardware", "price/h", "reliability", "score")
    for d in devices:
        hw = f"{d['gpu_count']} × {d['gpu_model']}" if d["gpu_count"] else f"{d['cpu_cores']} cores"
        score = "-" if d["verified_score"] is None else f"{d['verified_score']:,.0f} GFLOP/s"
        table.add_row(
            d["id"],
            d["name"],
            d["status"],
            d["status_reason"] or "",
            hw,
            _usd(d["price_per_gpu_hour_micro"]),
            f"{d['reliability']:.2f}",
            score,
        )
    console.print(table)


@app.command("show")
def show(device_id: str, as_json: JsonOpt = False) -> None:
    """One device: latest telemetry, uptime (30 days, or its life if shorter), last verification."""
    data = _call("GET", f"{BASE}/{device_id}")
    if as_json:
        typer.echo(dumps(data))
        return
    d = data["device"]
    console.print(f"[bold]{d['name']}[/] {d['id']}: {d['status']} ({d['status_reason'] or '-'})")
    rows = _call("GET", f"{BASE}/{device_id}/events")
    why = next((e for e in rows if e["reason"] == d["status_reason"]), None)
    if why is not None and why["message"]:
        console.print(f"  {why['message']}", markup=False, soft_wrap=True)
    console.print(
        f"{_uptime(data['uptime_30d_pct'], d['created_at'])}   "
        f"reliability: {d['reliability']:.2f}   last heartbeat: {data['last_heartbeat_at']}"
    )
    _print_offences(rows)
    if data["last_verification"]:
        v = data["last_verification"]
        console.print(f"last verification: {v['outcome'] or 'running'} {v['reason'] or ''}")
        if v.get("measured_s") is not None:
            console.print(
                f"  measured {v['measured_s']:.2f} s from challenge to commitment "
                f"(allowed {v['deadline_s']:.2f} s)"
            )
        if v.get("detail"):
            console.print(f"  {v['detail']}")


OFFENCE_DAYS = 30
"""Offences count against reliability this long (``tesai.devices.liveness.UPTIME_WINDOW_S``)."""


def _print_offences(rows: list[dict[str, Any]]) -> None:
    """The device's failed checks of the last 30 days (they lower its reliability, and
    repeated ones disable it for an admin's review), newest first."""
    since = time.time() - OFFENCE_DAYS * 86400
    recent = [
        e for e in rows if e.get("offence") and datetime.fromisoformat(e["at"]).timestamp() >= since
    ]
    if not recent:
        return
    console.print(f"failed checks in the last {OFFENCE_DAYS} days: {len(recent)}")
    for e in recent:
        console.print(f"  {e['at']}  {e['reason']}: {e['message']}", markup=False, soft_wrap=True)


@app.command("events")
def events(device_id: str, as_json: JsonOpt = False) -> None:
    """Status changes and failed checks of a device, newest first, with reasons."""
    rows = _call("GET", f"{BASE}/{device_id}/events")
    if as_json:
        typer.echo(dumps(rows))
        return
    table = Table("at", "from", "to", "reason", "message")
    for e in rows:
        # A failed check (an offence) lowers reliability: it stands out.
        reason = f"[red]{e['reason']}[/]" if e.get("offence") else e["reason"]
        table.add_row(e["at"], e["from_status"] or "", e["to_status"], reason, e["message"])
    console.print(table)


@app.command("price")
def price(device_id: str, usd_per_hour: float) -> None:
    """Set the price per GPU-hour (per hour for a CPU device), in USD."""
    d = _call(
        "PUT",
        f"{BASE}/{device_id}/price",
        json={"price_per_gpu_hour_micro": round(usd_per_hour * 1_000_000)},
    )
    unit = "GPU-hour" if d["gpu_count"] else "hour"
    console.print(f"{d['name']}: {_usd(d['price_per_gpu_hour_micro'])} per {unit}")


@app.command("disable")
def disable(device_id: str) -> None:
    """Take a device out of the pool."""
    d = _call("POST", f"{BASE}/{device_id}/disable")
    console.print(f"{d['name']}: {d['status']}")


@app.command("enable")
def enable(device_id: str) -> None:
    """Put a disabled device back into the pool."""
    d = _call("POST", f"{BASE}/{device_id}/enable")
    console.print(f"{d['name']}: {d['status']}")


@app.command("remove")
def remove(device_id: str) -> None:
    """Remove a device (not while it is rented)."""
    _call("DELETE", f"{BASE}/{device_id}")
    console.print(f"removed {device_id}")


@app.command("rotate")
def rotate(device_id: str) -> None:
    """Revoke the device's credential now and print a new join command for it."""
    _print_join(_call("POST", f"{BASE}/{device_id}/credential/rotate"))


@app.command("join-token")
def join_token(device_id: str) -> None:
    """A new one-time join command for a device."""
    _print_join(_call("POST", f"{BASE}/{device_id}/join-token"))

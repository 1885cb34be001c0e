"""Operations commands under `tesai admin`: drain, undrain, move-node, terminate, incidents,
sla, and credit.

They call the operations API (``/api/v1/internal/ops``) and the credit grant
(``/api/v1/internal/credits``) with the stored login of an admin (`tesai login`). Reports
take ``--json``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from tesai.cli.common import JsonOpt, api, console, dumps, err
from tesai.cli.common import call as _call
from tesai.cli.money import KeyOpt, to_micro, usdc

OPS = "/api/v1/internal/ops"
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (kept in events and audit log).")]


def _usd(micro: int) -> str:
    return f"${micro / 1_000_000:,.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.3f} %"


def drain(device: str, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Drain a device: its cluster nodes finish, no new ones are placed, then `drained`."""
    data = _call("POST", f"{OPS}/devices/{device}/drain", json={"reason": reason})
    if as_json:
        typer.echo(dumps(data))
        return
    console.print(f"Device {data['id']} is [bold]{data['status']}[/] ({data['live_nodes']} nodes)")


def undrain(device: str, as_json: JsonOpt = False) -> None:
    """Put a draining or drained device back in the pool."""
    data = _call("POST", f"{OPS}/devices/{device}/undrain")
    if as_json:
        typer.echo(dumps(data))
        return
    console.print(f"Device {data['id']} is [bold]{data['status']}[/]")


def move_node(cluster: str, node: str, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Move a node off its device: a replacement is placed; the node leaves once it runs."""
    data = _call("POST", f"{OPS}/clusters/{cluster}/nodes/{node}/move", json={"reason": reason})
    if as_json:
        typer.echo(dumps(data))
        return
    when = "now (the cluster re-forms)" if data["left_at_once"] else "once the replacement runs"
    console.print(
        f"Node {data['node_id']} leaves device {data['device_id']} {when}; replacement node "
        f"{data['replacement_node_id']} on device {data['replacement_device_id']}."
    )


def terminate(cluster: str, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Force-terminate any cluster, with a reason."""
    data = _call(
        "POST", f"/api/v1/internal/clusters/{cluster}/terminate", params={"reason": reason}
    )
    if as_json:
        typer.echo(dumps(data))
        return
    console.print(f"Cluster {data['id']} is [bold]{data['status']}[/]")


def incidents(
    cluster: Annotated[str | None, typer.Option("--cluster", help="A cluster id.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="A device id.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The incident timeline of a cluster or a device: faults, impact, billing credit."""
    if (cluster is None) == (device is None):
        err.print("[red]give exactly one of --cluster or --device[/]")
        raise typer.Exit(2)
    path = f"clusters/{cluster}" if cluster else f"devices/{device}"
    data = _call("GET", f"{OPS}/{path}/incidents")
    if as_json:
        typer.echo(dumps(data))
        return
    impact = "degraded" if data["subject_type"] == "cluster" else "down"
    table = Table(
        "at", "kind", "reason", "node", "nodes", "GPUs", f"{impact} s", "unbilled s", "credit"
    )
    for i in data["incidents"]:
        table.add_row(
            i["at"][:19].replace("T", " "),
            i["kind"],
            i["reason"],
            (i["node_id"] or "-")[:8],
            str(i["nodes_affected"]),
            str(i["gpus_affected"]),
            str(i["impact_seconds"]),
            str(i["unbilled_seconds"]),
            _usd(i["credit_micro"]),
        )
    console.print(table)
    console.print(
        f"{data['subject_type']} {data['subject_id']} ({data['status']}): "
        f"{data['impact_seconds']} s {impact}, {data['unbilled_seconds']} s unbilled, "
        f"credit {_usd(data['credit_micro'])}"
    )


def sla(
    since: Annotated[str | None, typer.Option("--since", help="ISO time (default: -30 d).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time (default: now).")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="One provider id.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Uptime against the promise per provider (worst first), and fault statistics."""
    params = {k: v for k, v in (("since", since), ("until", until), ("provider_id", provider)) if v}
    data = _call("GET", f"{OPS}/sla", params=params)
    if as_json:
        typer.echo(dumps(data))
        return
    table = Table("provider", "devices", "uptime", "promised", "met", "faults", "MTTR s")
    for p in data["providers"]:
        met = "-" if p["met"] is None else ("yes" if p["met"] else "[red]no[/]")
        mttr = "-" if p["mttr_seconds"] is None else f"{p['mttr_seconds']:.0f}"
        table.add_row(
            p["email"] or p["provider_id"],
            str(p["devices"]),
            _pct(p["uptime"]),
            _pct(p["promised_uptime"]),
            met,
            str(p["faults"]),
            mttr,
        )
    console.print(table)
    f = data["faults"]
    console.print(f"{data['since'][:19]} → {data['until'][:19]}")
    console.print(f"device faults: {f['device_faults_by_reason'] or 'none'}")
    console.print(f"cluster faults: {f['cluster_faults_by_reason'] or 'none'}")


def set_sla(
    provider: str,
    promised_uptime: Annotated[float, typer.Argument(help="A fraction, e.g. 0.995.")],
) -> None:
    """Set the uptime a provider promises."""
    data = _call(
        "PUT", f"{OPS}/providers/{provider}/sla", json={"promised_uptime": promised_uptime}
    )
    console.print(f"Provider {data['provider_id']} promises {_pct(data['promised_uptime'])}")


def _user_id(who: str) -> str:
    """A user id as given, or the id of the user with exactly this email (exits 1 if none)."""
    try:
        return str(uuid.UUID(who))
    except ValueError:
        pass
    email = who.strip().lower()
    page = _call("GET", "/api/v1/internal/users", params={"email": email, "limit": 500})
    for user in page["items"]:
        if (user["email"] or "").lower() == email:
            return str(user["id"])
    err.print(f"[red]No user with the email {escape(who)}[/]")
    raise typer.Exit(1)


def credit(
    user: Annotated[str, typer.Argument(help="The user's email or id.")],
    amount: Annotated[float, typer.Option("--amount", help="USDC to credit.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (kept in the ledger and the audit log).")
    ],
    idempotency_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a user credit to spend on clusters (audited).

    The command makes an idempotency key itself; if it cannot tell whether the grant went through (the connection broke), it prints the key: run it again with --idempotency-key KEY and the credit is given at most once.
    """  # noqa: E501 - typer re-wraps paragraphs; a line each keeps --help tidy
    # Imported here for start-up cost (see tesai.cli), not to dodge an import cycle.
    import httpx

    from tesai.client import ApiError

    micro = to_micro(amount)
    user_id = _user_id(user)
    key = idempotency_key or str(uuid.uuid4())
    body = {"user_id": user_id, "amount_micro": micro, "reason": reason}
    shown = escape(key)
    retry = f"Run it again with --idempotency-key {shown}: the credit is given at most once."
    with api() as client:
        try:
            data = client.post(
                "/api/v1/internal/credits", json=body, headers={"Idempotency-Key": key}
            )
        except httpx.TransportError as exc:  # e.g. a timeout after the request was sent
            why = escape(f"{type(exc).__name__}: {exc}")
            err.print(f"[red]No answer from the server[/] ({why})")
            err.print(f"The credit may or may not have been given. {retry}", soft_wrap=True)
            raise typer.Exit(1) from exc
        except ApiError as exc:
            if exc.status >= 500:
                err.print(retry, soft_wrap=True)
            raise
    if as_json:
        typer.echo(dumps({**data, "user_id": user_id, "idempotency_key": key}))
        return
    console.print(
        f"Credited [bold]{usdc(data['amount_micro'])}[/] to {escape(user)} "
        f"(ledger transaction {data['transaction_id']}, idempotency key {shown})"
    )


def register(admin_app: typer.Typer) -> None:
    """Add the operations commands to `tesai admin`."""
    admin_app.command("drain")(drain)
    admin_app.command("undrain")(undrain)
    admin_app.command("move-node")(move_node)
    admin_app.command("terminate")(terminate)
    admin_app.command("incidents")(incidents)
    admin_app.command("sla")(sla)
    admin_app.command("set-sla")(set_sla)
    admin_app.command("credit")(credit)

"""What the CLI's command groups share: the consoles, ``--json`` and one API call that
turns "not logged in", an unreachable server and API problems into a red line and exit
status 1.

The HTTP client (httpx, pydantic) is imported only when a command calls the API, never
while the command tree is built: see ``tesai.cli`` on start-up cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from tesai.client import TesaiClient

console = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def hardware(gpu_model: str | None, units: int) -> str:
    """What a cluster or offer is made of: ``2 × NVIDIA A100``, ``1 CPU node``.

    A CPU cluster's ``gpus`` counts its nodes (the API's one unit field), so it is never
    called GPUs."""
    return f"{units} × {gpu_model}" if gpu_model else plural(units, "CPU node")


def rate_unit(gpu_model: str | None) -> str:
    """The unit of a listed price: per GPU-hour, or per node-hour on CPU devices."""
    return "GPU-h" if gpu_model else "node-h"


def fee_line(fee_bps: int) -> str:
    """The line that goes with listed prices: the fee a quote adds on top of them."""
    return (
        f"Listed prices are the providers'; a {fee_bps / 100:g} % platform fee is added on "
        "top (`tesai quote` shows both)."
    )


def dumps(data: Any) -> str:
    """JSON for `--json` output."""
    return json.dumps(data, indent=2, default=str)


@contextmanager
def api() -> Iterator[TesaiClient]:
    """The stored login's client for a block of API calls; exits 1 with a red line when
    there is no login, the server cannot be reached or it answers with a problem."""
    # Imported here for start-up cost (see tesai.cli), not to dodge an import cycle.
    import httpx

    from tesai.client import ApiError, NotLoggedIn, TesaiClient

    try:
        with TesaiClient() as client:
            yield client
    except NotLoggedIn as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    except ApiError as exc:
        err.print(f"[red]{exc.status} {exc.code}[/]: {escape(exc.detail)}")
        raise typer.Exit(1) from exc
    except httpx.TransportError as exc:
        err.print(f"[red]Cannot reach the server:[/] {type(exc).__name__}: {escape(str(exc))}")
        raise typer.Exit(1) from exc


def call(method: str, path: str, **kwargs: Any) -> Any:
    """``method path`` with the saved login; exits 1 with the problem on failure."""
    with api() as client:
        return client.request(method, path, **kwargs)

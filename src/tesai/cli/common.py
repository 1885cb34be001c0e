"""What the CLI's command groups share: the consoles, ``--json`` and one API call that
turns "not logged in" and API problems into a red line and exit status 1."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from tesai.client import ApiError, NotLoggedIn, TesaiClient

console = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def call(method: str, path: str, **kwargs: Any) -> Any:
    """``method path`` with the saved login; exits 1 with the problem on failure."""
    try:
        with TesaiClient() as client:
            return client.request(method, path, **kwargs)
    except NotLoggedIn as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    except ApiError as exc:
        err.print(f"[red]{exc.status} {exc.code}[/]: {exc.detail}")
        raise typer.Exit(1) from exc

"""Entry point of the `tesai` command; each domain adds its commands here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tesai",
    help="TES AI: rent secured Ray clusters from a pool of GPUs.",
    no_args_is_help=True,
)


@app.command()
def version() -> None:
    """Print the version."""
    from tesai import __version__

    typer.echo(__version__)

"""Entry point of the `tesai` command; each domain adds its commands here."""

from __future__ import annotations

import typer

from tesai.cli import admin as admin_cli
from tesai.cli import agent as agent_cli
from tesai.cli import auth as auth_cli
from tesai.cli import clusters as clusters_cli
from tesai.cli import devices as devices_cli
from tesai.cli import money as money_cli
from tesai.cli import notifications as notifications_cli
from tesai.cli import report as report_cli
from tesai.cli import server
from tesai.cli import tasks as tasks_cli

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


app.command()(server.up)
app.command()(server.server)
app.command()(server.migrate)
app.add_typer(tasks_cli.app, name="tasks")
auth_cli.register(app)
admin_cli.register(auth_cli.admin_app)
app.add_typer(agent_cli.app, name="agent")
clusters_cli.register(app)
app.add_typer(devices_cli.app, name="device")
money_cli.register(app)
report_cli.register(app)
notifications_cli.register(app)

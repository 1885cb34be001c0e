"""`tesai tasks worker` and `tesai tasks beat`: the Celery side of production mode."""

from __future__ import annotations

from typing import Annotated

import typer

# Celery and the settings are imported inside the commands: loading them costs seconds, which
# every other `tesai` command would pay too (start-up cost, see tesai.cli).

app = typer.Typer(help="Background task processes (Celery, RabbitMQ broker).", no_args_is_help=True)


def _settings_with_broker() -> None:
    from tesai.settings import get_settings

    if not get_settings().broker_url:
        typer.echo("TESAI_BROKER_URL is not set: tasks run inside `tesai up` instead.", err=True)
        raise typer.Exit(2)


@app.command()
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(help="Worker processes (default: TESAI_TASK_WORKER_CONCURRENCY)."),
    ] = None,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork or solo.")] = "prefork",
    queue: Annotated[
        list[str] | None, typer.Option(help="Consume only this queue (repeatable).")
    ] = None,
) -> None:
    """Run a Celery worker executing every registered task until stopped (SIGTERM drains)."""
    from tesai.celery_app import run_worker
    from tesai.settings import get_settings

    _settings_with_broker()
    settings = get_settings()
    if pool not in ("prefork", "solo"):
        raise typer.BadParameter("pool must be prefork or solo", param_hint="--pool")
    run_worker(
        settings,
        concurrency=concurrency or settings.task_worker_concurrency,
        pool=pool,
        queues=queue or None,
    )


@app.command()
def beat() -> None:
    """Run Celery beat, which publishes the periodic tasks on their schedule. Run exactly one."""
    from tesai.celery_app import run_beat
    from tesai.settings import get_settings

    _settings_with_broker()
    run_beat(get_settings())

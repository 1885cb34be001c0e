"""Commands that run the control plane: `tesai up`, `tesai server`, `tesai migrate`."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tesai.settings import Settings

# The settings, the app and the database are imported inside each command: `tesai --help`
# and the client commands must not load the control plane (start-up cost, see tesai.cli).

console = Console()
err = Console(stderr=True)


def _configure_logging(settings: Settings) -> None:
    from tesai.observability.logging import configure_logging

    configure_logging(settings)


@contextmanager
def _database(settings: Settings) -> Iterator[str]:
    """The configured database URL, or the embedded PostgreSQL's for the duration."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    if settings.environment == "production":
        err.print(
            "[red]TESAI_DATABASE_URL is not set.[/] Production needs its own PostgreSQL: "
            "set TESAI_DATABASE_URL=postgresql://user:password@host:5432/tesai"
        )
        raise typer.Exit(2)
    from tesai.embedded.postgres import EmbeddedPostgres

    postgres = EmbeddedPostgres(settings.home)
    url = postgres.start()
    try:
        yield url
    finally:
        postgres.stop()


def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database to the newest schema (TESAI_DATABASE_URL, else the embedded one)."""
    import asyncio

    from tesai import migrations
    from tesai.settings import get_settings

    settings = get_settings()
    with _database(settings) as url:
        before = asyncio.run(migrations.current_revision(url))
        migrations.upgrade(url, revision)
        after = asyncio.run(migrations.current_revision(url))
    console.print(f"database at revision {after} (was {before})")


def up(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: TESAI_HOST).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: TESAI_PORT, 8000).")] = None,
    agent: Annotated[
        bool, typer.Option("--agent/--no-agent", help="Also run an agent for this machine.")
    ] = True,
    admin_email: Annotated[
        str | None,
        typer.Option(
            help="Email of the local administrator (default: TESAI_ADMIN_EMAIL, admin@example.com)."
        ),
    ] = None,
    admin_password: Annotated[
        str | None,
        typer.Option(
            help="Its password (default: TESAI_ADMIN_PASSWORD): set on creation, or reset if "
            "given later. Unset on first start: a random one, printed and kept in "
            "TESAI_HOME/admin-password (0600).",
        ),
    ] = None,
) -> None:
    """Run TES AI on this machine, all in one process, until Ctrl-C.

    Starts its own PostgreSQL (data under TESAI_HOME) unless TESAI_DATABASE_URL is set, migrates it, and serves the API and console on --host and --port (http://127.0.0.1:8000 by default) with background tasks in-process. An agent joins this machine to the pool. Join commands, Ray addresses and the console advertise that address unless TESAI_PUBLIC_URL is set.

    First start: creates the local administrator (admin, provider and customer; admin@example.com unless --admin-email) and prints its password, also kept in TESAI_HOME/admin-password.

    Ctrl-C or SIGTERM stops everything it started; the data stays for the next start.
    """  # noqa: E501 - typer re-wraps paragraphs; a line each keeps --help tidy
    from tesai.embedded.up import UpOptions, run_up
    from tesai.settings import get_settings

    settings = get_settings()
    if settings.environment == "production":
        err.print("[red]`tesai up` is the embedded mode;[/] in production use `tesai server`.")
        raise typer.Exit(2)
    if "log_json" not in settings.model_fields_set:
        settings = settings.model_copy(update={"log_json": False})  # a person reads these
    _configure_logging(settings)
    options = UpOptions(
        host=host or settings.host,
        port=port if port is not None else settings.port,
        agent=agent,
        admin_email=admin_email or settings.admin_email,
        admin_password=admin_password
        or (settings.admin_password.get_secret_value() if settings.admin_password else None),
    )
    raise typer.Exit(run_up(settings, options, console))


def create_server_app() -> FastAPI:
    """The app factory each `tesai server` worker process calls."""
    from tesai.app import create_app
    from tesai.settings import get_settings

    settings = get_settings()
    _configure_logging(settings)
    return create_app(settings)


def server(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: TESAI_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: TESAI_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: TESAI_WORKERS).")
    ] = None,
) -> None:
    """Serve the API for production: several uvicorn worker processes.

    Needs TESAI_DATABASE_URL when TESAI_ENVIRONMENT=production (run `tesai migrate` first). Run with TESAI_REDIS_URL and TESAI_BROKER_URL, next to `tesai tasks worker` and one `tesai tasks beat`.

    Sets PROMETHEUS_MULTIPROC_DIR to a fresh directory when unset, so /metrics adds up every worker.
    """  # noqa: E501 - typer re-wraps paragraphs; a line each keeps --help tidy

    import uvicorn

    from tesai.devices.liveness import server_keep_alive_s
    from tesai.settings import get_settings

    settings = get_settings()
    if settings.environment == "production":
        missing = [
            name
            for name, value in (
                ("TESAI_REDIS_URL", settings.redis_url),
                ("TESAI_BROKER_URL", settings.broker_url),
            )
            if not value
        ]
        if missing:
            err.print(
                f"[yellow]warning:[/] {', '.join(missing)} not set: each worker keeps its own "
                "cache and runs background tasks itself"
            )
    _configure_logging(settings)
    metrics_dir: str | None = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="tesai-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with _database(settings) as url:
            if settings.database_url is None:
                from tesai import migrations

                migrations.upgrade(url)  # the embedded database is ours to keep current
                os.environ["TESAI_DATABASE_URL"] = url  # the workers read their settings
            else:
                _warn_unless_migrated(url)
            uvicorn.run(
                "tesai.cli.server:create_server_app",
                factory=True,
                host=host or settings.host,
                port=port if port is not None else settings.port,
                workers=workers or settings.workers,
                # Believe X-Forwarded-For only from the proxies the settings name.
                proxy_headers=settings.forwarded_allow_ips is not None,
                forwarded_allow_ips=settings.forwarded_allow_ips,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=20,
                # Longer than the agents keep an idle connection (tesai.agent.http).
                timeout_keep_alive=server_keep_alive_s(settings.heartbeat_interval_s),
                # A worker imports the whole control plane before it answers the
                # supervisor's health check; uvicorn's 5 s kills it on a busy small host.
                timeout_worker_healthcheck=60,
            )
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _warn_unless_migrated(url: str) -> None:
    import asyncio

    from tesai import migrations

    current = asyncio.run(migrations.current_revision(url))
    head = migrations.head_revision()
    if current != head:
        err.print(
            f"[yellow]warning:[/] the database is at revision {current}, this release "
            f"expects {head}: run `tesai migrate`"
        )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal that stopped it; turn SIGTERM into an exception so the
    # clean-up above (embedded database, metrics directory) still runs.
    raise KeyboardInterrupt

"""`tesai up`: the whole control plane in one process on this machine.

Order of start: embedded PostgreSQL (unless ``TESAI_DATABASE_URL`` is set) → migrations to
head → runtime (in-process tasks and, without ``TESAI_REDIS_URL``, in-process cache) → local
admin account → API (uvicorn, one worker, in this process) → local agent. A first SIGINT or
SIGTERM stops them in reverse order; a second one cuts the HTTP drain short. Whatever child
process is still left at the end is terminated, so nothing `tesai up` started outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import psutil
import structlog
import uvicorn
from rich.console import Console

from tesai import migrations
from tesai.app import create_app
from tesai.embedded.accounts import LocalAdmin, ensure_local_admin
from tesai.embedded.postgres import EmbeddedPostgres
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings

log = structlog.get_logger(__name__)

LOCAL_AGENT_MODULE = "tesai.agent.local"
"""Module whose ``start_local_agent`` starts this machine's agent (see ``_start_agent``)."""


@dataclass(frozen=True)
class UpOptions:
    host: str
    port: int
    agent: bool = True
    admin_email: str = "admin@example.com"
    admin_password: str | None = None


class LocalAgent(Protocol):
    """What ``start_local_agent`` returns: something that stops the agent it started."""

    def stop(self) -> Any: ...


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: `tesai up` owns the signals of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@dataclass
class _Signals:
    """SIGINT/SIGTERM for the whole life of `tesai up`.

    Before the event loop runs, a signal raises ``KeyboardInterrupt`` so the start-up is
    abandoned and the ``finally`` blocks stop what was started. While serving, it asks for
    an orderly stop; a second one forces uvicorn to stop waiting for open requests. While
    stopping, signals are ignored so the clean-up itself is never interrupted.
    """

    mode: str = "starting"
    stop_requested: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    requested: asyncio.Event | None = None
    server: uvicorn.Server | None = None
    _previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.mode == "stopping":
            return
        if self.mode == "starting":
            self.mode = "stopping"
            raise KeyboardInterrupt
        if not self.stop_requested:
            self.stop_requested = True
            if self.loop is not None and self.requested is not None:
                self.loop.call_soon_threadsafe(self.requested.set)
        elif self.server is not None:
            self.server.force_exit = True


def run_up(settings: Settings, options: UpOptions, console: Console) -> int:
    """Run until SIGINT/SIGTERM; return the process exit status."""
    signals = _Signals()
    signals.install()
    postgres: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            postgres = EmbeddedPostgres(settings.home)
            console.print(f"Starting PostgreSQL (data in {postgres.data_dir}) …")
            url = postgres.start()
            settings = settings.model_copy(update={"database_url": url})
        console.print("Migrating the database …")
        migrations.upgrade(settings.database_url)
        # One process: tasks run in it (no broker); host and port from the options.
        settings = settings.model_copy(
            update={"broker_url": None, "host": options.host, "port": options.port, "workers": 1}
        )
        signals.mode = "serving"
        asyncio.run(_serve(settings, options, console, signals, embedded=postgres is not None))
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        signals.mode = "stopping"
        console.print("Stopping …")
        if postgres is not None:
            postgres.stop()
        _stop_children()
        signals.restore()
        console.print("Stopped.")


async def _serve(
    settings: Settings, options: UpOptions, console: Console, signals: _Signals, *, embedded: bool
) -> None:
    signals.requested = asyncio.Event()
    signals.loop = asyncio.get_running_loop()
    if signals.stop_requested:
        return
    runtime = await open_runtime(settings)
    try:
        async with runtime.sessionmaker() as session:
            admin = await ensure_local_admin(
                session, settings.home, email=options.admin_email, password=options.admin_password
            )
            await session.commit()
        app = create_app(settings, runtime=runtime)
        config = uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            workers=1,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
        server = _Server(config)
        signals.server = server
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.wait({serving}, timeout=0.05)  # uvicorn has no "started" event
        if not server.started:
            await serving  # re-raises why it did not start (e.g. the port is taken)
            return
        base_url = f"http://{_url_host(options.host)}:{options.port}"
        agent = await _start_agent(runtime, settings, admin, base_url) if options.agent else None
        _print_banner(console, settings, admin, base_url, embedded, agent, options.agent)
        if signals.stop_requested:
            signals.requested.set()
        stop_wait = asyncio.create_task(signals.requested.wait())
        await asyncio.wait({serving, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        signals.mode = "draining"
        if agent is not None:
            await _stop_agent(agent)
        server.should_exit = True
        await serving
    finally:
        await runtime.close()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def _start_agent(
    runtime: Runtime, settings: Settings, admin: LocalAdmin, server_url: str
) -> LocalAgent | None:
    """Start this machine's agent through ``tesai.agent.local.start_local_agent``.

    The function is called with the keyword arguments it declares among: ``runtime``,
    ``settings``, ``owner_id`` (the local admin, also provider), ``server_url`` and
    ``state_dir`` (``TESAI_HOME/agent``). It may be sync or async and returns an object
    with a ``stop()`` (sync or async). When the module does not exist, no agent starts.
    """
    try:
        module = importlib.import_module(LOCAL_AGENT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is not None and LOCAL_AGENT_MODULE.startswith(exc.name):
            log.info("local_agent_unavailable", module=LOCAL_AGENT_MODULE)
            return None
        raise
    start: Callable[..., Any] = module.start_local_agent
    offered: dict[str, Any] = {
        "runtime": runtime,
        "settings": settings,
        "owner_id": admin.user_id,
        "server_url": server_url,
        "state_dir": settings.home / "agent",
    }
    accepted = inspect.signature(start).parameters
    result = start(**{k: v for k, v in offered.items() if k in accepted})
    if inspect.isawaitable(result):
        result = await result
    agent: LocalAgent | None = result
    return agent


async def _stop_agent(agent: LocalAgent) -> None:
    try:
        result = agent.stop()
        if inspect.isawaitable(result):
            await asyncio.wait_for(result, timeout=30)
    except Exception:
        log.exception("local_agent_stop_failed")


def _print_banner(
    console: Console,
    settings: Settings,
    admin: LocalAdmin,
    base_url: str,
    embedded: bool,
    agent: LocalAgent | None,
    agent_wanted: bool,
) -> None:
    console.print(f"\n[bold green]TES AI is running at {base_url}[/]")
    console.print(f"  API docs:  {base_url}/api/docs")
    if admin.password is not None and admin.created:
        console.print(f"  Log in as [bold]{admin.email}[/] with password [bold]{admin.password}[/]")
        if admin.password_file is not None:
            console.print(f"  (first start: the password is also kept in {admin.password_file})")
    elif admin.password_file is not None:
        console.print(f"  Log in as [bold]{admin.email}[/]; password in {admin.password_file}")
    else:
        console.print(f"  Log in as [bold]{admin.email}[/] with the password you set")
    if embedded:
        console.print(f"  Data:      {settings.home} (embedded PostgreSQL)")
    else:
        console.print("  Data:      the database at TESAI_DATABASE_URL")
    if agent_wanted and agent is None:
        console.print("  Agent:     not available in this build; this machine is not in the pool")
    console.print("Press Ctrl-C to stop.\n")


def _stop_children(timeout: float = 10.0) -> None:
    """Terminate, then kill, every process this one started that is still alive."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)

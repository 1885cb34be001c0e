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
import inspect
import signal
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal, Protocol

import psutil
import structlog
import uvicorn
from rich.console import Console

from tesai import migrations
from tesai.app import create_app
from tesai.devices.liveness import server_keep_alive_s
from tesai.embedded.accounts import LocalAdmin, ensure_local_admin
from tesai.embedded.postgres import EmbeddedPostgres
from tesai.runtime import Runtime, open_runtime
from tesai.settings import Settings

log = structlog.get_logger(__name__)


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


class ApiDidNotStart(Exception):
    """uvicorn gave up during start-up (it logged why, e.g. the port is taken)."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"uvicorn exited with {exit_code}")
        self.exit_code = exit_code


async def _run_server(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn's way to report a failed start-up
        raise ApiDidNotStart(exc.code if isinstance(exc.code, int) else 1) from None


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: `tesai up` owns the signals of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@dataclass
class _Signals:
    """SIGINT/SIGTERM for the whole life of `tesai up`.

    The first signal asks for an orderly stop: during start-up it is honoured between steps
    (each takes seconds), while serving it drains the agent and the API. A second one is
    impatient: during start-up it raises ``KeyboardInterrupt`` (the ``finally`` blocks
    still stop what was started), while serving it makes uvicorn stop waiting for open
    requests. During the final clean-up signals are ignored so it is never interrupted.
    """

    mode: Literal["starting", "serving", "draining", "stopping"] = "starting"
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
        if not self.stop_requested:
            self.stop_requested = True
            if self.loop is not None and self.requested is not None:
                self.loop.call_soon_threadsafe(self.requested.set)
        elif self.mode == "starting":
            self.mode = "stopping"
            raise KeyboardInterrupt
        elif self.server is not None:
            self.server.force_exit = True


def serving_settings(settings: Settings, options: UpOptions) -> Settings:
    """The settings `tesai up` serves with: one process that runs its tasks itself (no
    broker), on the host and port of the options, and advertising that address wherever a URL
    of this server is handed out (join commands, Ray addresses, the console's public URL, the
    dashboard origin), unless ``TESAI_PUBLIC_URL`` says how users reach it. Its own agent's
    Ray heads run on this machine, on loopback or the local network, so the Ray proxy may
    connect there (``ray_proxy_allow_internal_heads``) unless the environment says no."""
    update: dict[str, Any] = {
        "broker_url": None,
        "host": options.host,
        "port": options.port,
        "workers": 1,
    }
    if "public_url" not in settings.model_fields_set:
        update["public_url"] = local_url(options.host, options.port)
    if "ray_proxy_allow_internal_heads" not in settings.model_fields_set:
        update["ray_proxy_allow_internal_heads"] = True
    return settings.model_copy(update=update)


def local_url(host: str, port: int) -> str:
    """``http://HOST:PORT`` of a server listening on ``host`` (any address: the loopback)."""
    return f"http://{_url_host(host)}:{port}"


def run_up(settings: Settings, options: UpOptions, console: Console) -> int:
    """Run until SIGINT/SIGTERM; return the process exit status."""
    signals = _Signals()
    signals.install()
    postgres: EmbeddedPostgres | None = None
    try:
        if settings.database_url is None:
            postgres = EmbeddedPostgres(settings.home)
            console.print(f"Starting PostgreSQL (data in {postgres.data_dir}) …")
            try:
                url = postgres.start()
            except Exception:
                # Ctrl-C reaches initdb and pg_ctl too (same process group): not a crash.
                if signals.stop_requested:
                    return 130
                raise
            settings = settings.model_copy(update={"database_url": url})
        if signals.stop_requested:
            return 130
        console.print("Migrating the database …")
        migrations.upgrade(settings.database_url)
        if signals.stop_requested:
            return 130
        settings = serving_settings(settings, options)
        signals.mode = "serving"
        asyncio.run(_serve(settings, options, console, signals, embedded=postgres is not None))
        return 0
    except KeyboardInterrupt:
        return 130
    except ApiDidNotStart as exc:
        console.print(f"[red]The API did not start[/] on {options.host}:{options.port}.")
        return exc.exit_code
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
            proxy_headers=settings.forwarded_allow_ips is not None,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            timeout_keep_alive=server_keep_alive_s(settings.heartbeat_interval_s),
        )
        server = _Server(config)
        signals.server = server
        serving = asyncio.create_task(_run_server(server))
        try:
            while not server.started and not serving.done():
                await asyncio.wait({serving}, timeout=0.05)  # uvicorn has no "started" event
            if not server.started:
                await serving  # re-raises why it did not start (e.g. the port is taken)
                return
            base_url = local_url(options.host, options.port)
            agent, agent_note = None, "off (--no-agent)"
            if options.agent:
                agent, agent_note = await _start_agent(runtime, settings, admin, base_url)
            _print_banner(console, settings, admin, base_url, embedded, agent_note)
            if signals.stop_requested:
                signals.requested.set()
            stop_wait = asyncio.create_task(signals.requested.wait())
            await asyncio.wait({serving, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            signals.mode = "draining"
            if agent is not None:
                await _stop_agent(agent)
        finally:
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
) -> tuple[LocalAgent | None, str]:
    """Start this machine's agent (``tesai.embedded.agent``); return it and a line for the
    banner. A failing agent does not take the control plane down: it is logged and shown."""
    try:
        from tesai.embedded.agent import AGENT_LOG, start_local_agent
    except ImportError as exc:  # a build without the agent
        log.info("local_agent_unavailable", error=str(exc))
        return None, "not in this build; this machine is not in the pool"
    try:
        agent: LocalAgent = await start_local_agent(
            runtime, admin.user_id, server_url, settings.home
        )
    except Exception as exc:
        log.exception("local_agent_failed")
        return None, f"failed to start ({type(exc).__name__}: {exc}); see the log above"
    return agent, f"running for this machine (log: {settings.home / AGENT_LOG})"


async def _stop_agent(agent: LocalAgent) -> None:
    try:
        # A subprocess handle's stop() blocks while the agent says goodbye to the API,
        # which must keep serving meanwhile: wait in a thread.
        result = await asyncio.to_thread(agent.stop)
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
    agent_note: str,
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
    console.print(f"  Agent:     {agent_note}")
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

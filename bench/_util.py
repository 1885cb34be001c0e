"""Helpers shared by the benchmarks: scratch databases, server processes, wrk runs.

Benchmarks run against the real local services (PostgreSQL, Redis) like the tests do; URLs
come from ``TESAI_BENCH_DATABASE_URL`` / ``TESAI_BENCH_REDIS_URL``, defaulting to the test
services at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

DATABASE_URL = os.environ.get(
    "TESAI_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TESAI_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """One line describing where the figures come from."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"load average {load}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plain(url: str) -> str:
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _with_database(url: str, name: str) -> str:
    return f"{url.rpartition('/')[0]}/{name}"


@contextmanager
def scratch_database(prefix: str = "tesai_bench") -> Iterator[str]:
    """A fresh database with every table of ``tesai.models`` created; dropped afterwards."""
    from tesai.db import create_engine
    from tesai.dbextras import install_database_extras
    from tesai.models import metadata
    from tesai.settings import Settings

    name = f"{prefix}_{secrets.token_hex(4)}"
    url = _with_database(DATABASE_URL, name)

    async def create() -> None:
        admin = await asyncpg.connect(_plain(DATABASE_URL))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        engine = create_engine(Settings(database_url=url))
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await install_database_extras(conn)
        await engine.dispose()

    async def drop() -> None:
        admin = await asyncpg.connect(_plain(DATABASE_URL))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield url
    finally:
        asyncio.run(drop())


def delete_redis_prefix(prefix: str) -> None:
    """Remove every key a benchmark left under ``prefix``."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(eq=False)  # compared and hashed by identity
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """Processes started by the server command (the uvicorn workers)."""
        import psutil

        return [
            p.pid
            for p in psutil.Process(self.process.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())
        ]


@contextmanager
def server_process(
    argv: Sequence[str], env: dict[str, str], port: int, *, ready_path: str = "/readyz"
) -> Iterator[ServerProcess]:
    """Start ``argv`` in its own process group; wait for ``ready_path`` to answer 200;
    stop the whole group on exit (SIGTERM, then SIGKILL)."""
    log_dir = Path(tempfile.mkdtemp(prefix="tesai-bench-log-"))
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(server.base_url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready within 60 s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(log_dir, ignore_errors=True)


# wrk prints this JSON line when a run ends (latencies in microseconds).
_WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int


def wrk(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    connections: int = 64,
    threads: int = 1,
    duration_s: float = 10,
) -> LoadResult:
    """Drive ``url`` with keep-alive connections from a separate ``wrk`` process."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk; `make bench` does it)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_REPORT)
    try:
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s:g}s",
            "--timeout",
            "5s",
            "-s",
            script.name,
        ]
        for name, value in (headers or {}).items():
            argv += ["-H", f"{name}: {value}"]
        out = subprocess.run(
            [*argv, url], capture_output=True, text=True, check=True, timeout=duration_s + 60
        ).stdout
    finally:
        os.unlink(script.name)
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    return LoadResult(
        requests=data["requests"],
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non_2xx=data["non_2xx"],
        socket_errors=data["socket_errors"],
    )


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """Per-figure medians over rounds."""
    return LoadResult(
        requests=int(statistics.median(r.requests for r in results)),
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p90_ms=statistics.median(r.p90_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        max_ms=statistics.median(r.max_ms for r in results),
        non_2xx=sum(r.non_2xx for r in results),
        socket_errors=sum(r.socket_errors for r in results),
    )

"""`tesai server`: the production API command."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.embedded.helpers import (
    TESAI,
    alive,
    clean_env,
    free_port,
    interrupt,
    process_tree,
    start,
    wait_ready,
)


def test_production_refuses_to_start_without_a_database(tmp_path: Path) -> None:
    env = clean_env(TESAI_ENVIRONMENT="production", TESAI_HOME=str(tmp_path))
    done = subprocess.run(
        [TESAI, "server", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "TESAI_DATABASE_URL" in done.stdout + done.stderr
    assert not (tmp_path / "postgres").exists(), "no embedded database in production"


@pytest.mark.slow
def test_serves_with_worker_processes_and_stops_them(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = clean_env(
        TESAI_ENVIRONMENT="production",
        TESAI_DATABASE_URL=database_url,
        TESAI_HOME=str(tmp_path / "home"),
    )
    proc = start(["server", "--port", str(port), "--workers", "2"], env, log, tmp_path)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log, timeout=90)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        tree = process_tree(proc.pid)
        workers = [p for p in tree[1:] if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in tree]
        metrics_dir = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        assert metrics_dir.is_dir()
    finally:
        code = interrupt(proc, signal.SIGTERM)
    assert code == 0, log.read_text()[-3000:]
    assert alive(tree) == []
    assert not metrics_dir.exists(), "the metrics directory it made is removed"

"""`tesai up` on a machine where nothing is configured: acceptance 1 of the foundation."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tesai.embedded.postgres import running_postgres_pid
from tests.embedded.helpers import (
    alive,
    clean_env,
    free_port,
    interrupt,
    process_tree,
    start,
    wait_printed,
    wait_ready,
)

USER = {"email": "first.user@example.com", "password": "correct horse battery"}


def _everything_started(pid: int, home: Path) -> list[psutil.Process]:
    """`tesai up` and its children, plus the PostgreSQL server it started (which pg_ctl
    detaches into its own session, so it is nobody's child)."""
    procs = process_tree(pid)
    postmaster = running_postgres_pid(home)
    assert postmaster is not None, "no embedded PostgreSQL running"
    procs += process_tree(postmaster)
    return procs


@pytest.mark.slow
def test_up_serves_stops_everything_and_keeps_users(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(TESAI_HOME=str(home))

    proc = start(["up", "--port", str(port)], env, log, tmp_path)
    try:
        wait_ready(proc, f"{base}/readyz", log, timeout=60)
        wait_printed(proc, "Press Ctrl-C to stop.", log, timeout=120)
        admin_password = (home / "admin-password").read_text().strip()
        assert admin_password in log.read_text(), "first start prints the admin password"
        signup = httpx.post(f"{base}/api/v1/auth/signup", json=USER, timeout=30)
        assert signup.status_code in (200, 201), signup.text
        started = _everything_started(proc.pid, home)
    finally:
        code = interrupt(proc, signal.SIGINT)
    assert code == 0, log.read_text()[-3000:]
    assert alive(started) == [], f"left running after Ctrl-C: {alive(started)}"

    # Same home again: the data survived, and SIGTERM stops it as cleanly.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["up", "--port", str(port)], env, log, tmp_path)
    try:
        wait_ready(proc, f"{base}/readyz", log, timeout=60)
        login = httpx.post(f"{base}/api/v1/auth/login", json=USER, timeout=30)
        assert login.status_code == 200, login.text
        assert login.json()["access_token"]
        admin = httpx.post(
            f"{base}/api/v1/auth/login",
            json={"email": "admin@example.com", "password": admin_password},
            timeout=30,
        )
        assert admin.status_code == 200, admin.text
        started = _everything_started(proc.pid, home)
    finally:
        code = interrupt(proc, signal.SIGTERM)
    assert code == 0, log.read_text()[-3000:]
    assert alive(started) == [], f"left running after SIGTERM: {alive(started)}"

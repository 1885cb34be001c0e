"""Running `tesai` commands as a user would: a subprocess with a clean environment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

TESAI = str(Path(sys.executable).with_name("tesai"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user who configured nothing: no TESAI_* (test services
    included), no proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TESAI_")
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``tesai args`` in its own session, like a command typed in a terminal."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [TESAI, *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> float:
    """Seconds until ``url`` answers 200; fails with the command's output otherwise."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout} s:\n{log.read_text()[-5000:]}")


def wait_printed(proc: subprocess.Popen[bytes], text: str, log: Path, timeout: float) -> None:
    """Wait until the command has printed ``text`` (the API answers before the banner, which
    comes once the local agent has started)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()[-5000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not printed in {timeout} s:\n{log.read_text()[-5000:]}")


def process_tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def interrupt(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = 60) -> int:
    """Send ``sig`` to the command's process group (what Ctrl-C does) and wait for it."""
    os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def alive(procs: list[psutil.Process], timeout: float = 10) -> list[psutil.Process]:
    """Those of ``procs`` still running after ``timeout`` seconds (zombies count as gone)."""
    _, still = psutil.wait_procs(procs, timeout=timeout)
    return [p for p in still if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

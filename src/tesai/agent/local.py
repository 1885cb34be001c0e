"""Start an agent for this machine as a subprocess (``tesai up``'s pool of one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class LocalAgentProcess(subprocess.Popen[bytes]):
    """The agent subprocess; ``stop()`` ends it the way a provider's SIGTERM does."""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (the agent tells the server it leaves), then SIGKILL after ``timeout``."""
        if self.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.wait()


def start_local_agent(
    server_url: str,
    state_dir: Path,
    join_token: str | None = None,
    *,
    metrics_port: int = 0,
    log_file: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> LocalAgentProcess:
    """Start ``python -m tesai.agent`` against ``server_url``; the caller owns the process.

    ``join_token`` is needed only until ``state_dir`` holds a credential (the first start);
    it travels in the environment, not argv, so ``ps`` does not show it. Without either the
    agent exits with status 2. Stop it with ``stop()``: it leaves the pool and exits 0.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = dict(os.environ)
    env.pop("TESAI_AGENT_TOKEN", None)
    if join_token:
        env["TESAI_AGENT_TOKEN"] = join_token
    env.update(extra_env or {})
    cmd = [
        sys.executable,
        "-m",
        "tesai.agent",
        "--server",
        server_url,
        "--state-dir",
        str(state_dir),
        "--metrics-port",
        str(metrics_port),
    ]
    if log_file is None:
        return LocalAgentProcess(cmd, env=env)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        return LocalAgentProcess(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

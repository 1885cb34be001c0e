"""`tesai agent doctor` checks, the agent CLI's exits, and the agent's import isolation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tesai.agent import doctor
from tesai.agent.state import AgentState


def test_state_dir_check_wants_a_private_dir_and_credential(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert doctor.check_state_dir(state).outcome == "OK"
    state.chmod(0o777)
    bad = doctor.check_state_dir(state)
    assert bad.outcome == "FAIL"
    assert bad.fix == f"chmod 700 {state}"
    state.chmod(0o700)
    (state / "credential.json").write_text("{}")
    (state / "credential.json").chmod(0o644)
    leaky = doctor.check_state_dir(state)
    assert leaky.outcome == "FAIL"
    assert "chmod 600" in (leaky.fix or "")


def test_port_check_names_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        check = doctor.check_ports({"GCS": port})
    assert check.outcome == "FAIL"
    assert str(port) in check.detail


def test_unreachable_server_fails_with_a_fix(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    reach, skew = doctor.check_server(f"http://127.0.0.1:{port}", timeout=2)
    assert reach.outcome == "FAIL"
    assert reach.fix
    assert skew.outcome == "WARN"


def _tesai_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tesai.agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TESAI_")} | (env or {}),
        check=False,
    )


def test_agent_without_credential_or_token_exits_2_and_says_why(tmp_path: Path) -> None:
    done = _tesai_agent(
        "--server", "http://127.0.0.1:9", "--state-dir", str(tmp_path), "--metrics-port", "0"
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no join token" in done.stderr
    assert "--token" in done.stderr
    assert AgentState(tmp_path).load_credential() is None


def test_agent_imports_none_of_the_server_dependencies(tmp_path: Path) -> None:
    blocked = [
        "sqlalchemy",
        "fastapi",
        "starlette",
        "celery",
        "redis",
        "asyncpg",
        "alembic",
        "uvicorn",
        "structlog",
        "ray",
        "tesai.app",
        "tesai.db",
        "tesai.settings",
        "tesai.devices",
        "tesai.accounts",
        "tesai.auth",
        "tesai.runtime",
    ]
    code = textwrap.dedent(
        f"""
        import sys
        BLOCKED = {blocked!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import tesai.agent.agent, tesai.agent.cli, tesai.agent.doctor, tesai.agent.local
        import tesai.agent.ray_node
        from tesai.agent.probe import probe_hardware
        print(probe_hardware().probe_status)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

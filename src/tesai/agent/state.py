"""The agent's state dir: its device credential and the commands it has applied.

``credential.json`` (mode 0600) holds the device token; ``applied_commands.json`` the ids of the
commands already applied with their results, so a command delivered twice (or again after a
restart) is acknowledged but never applied a second time. Files are replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from tesai.protocol.v1 import CommandResult

CREDENTIAL_FILE = "credential.json"
INSTANCE_FILE = "instance_id"
APPLIED_FILE = "applied_commands.json"
MAX_REMEMBERED_COMMANDS = 2000


def default_state_dir() -> Path:
    """``platformdirs.user_data_dir("tesai-agent")``, or the XDG equivalent without platformdirs."""
    try:
        from platformdirs import user_data_dir
    except ImportError:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
        return Path(base) / "tesai-agent"
    return Path(user_data_dir("tesai-agent"))


class Credential(BaseModel):
    """The device credential the join token was traded for."""

    server_url: str
    device_id: UUID
    device_token: str
    token_expires_at: datetime


def write_private(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class AgentState:
    """The state dir, loaded once and written on every change."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._applied: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        path = self.dir / APPLIED_FILE
        if path.exists():
            with contextlib.suppress(ValueError, OSError):
                raw = json.loads(path.read_text())
                for key, value in raw.get("applied", {}).items():
                    self._applied[str(key)] = value

    # --- credential ---

    def instance_id(self) -> str:
        """This agent installation's random id (created once, kept with the credential)."""
        path = self.dir / INSTANCE_FILE
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = ""
        if not value:
            value = secrets.token_hex(16)
            write_private(path, value)
        return value

    @property
    def credential_path(self) -> Path:
        return self.dir / CREDENTIAL_FILE

    def load_credential(self) -> Credential | None:
        """The stored credential, or None (missing or unreadable)."""
        try:
            return Credential.model_validate_json(self.credential_path.read_text())
        except (OSError, ValueError):
            return None

    def save_credential(self, credential: Credential) -> None:
        write_private(self.credential_path, credential.model_dump_json(indent=2))

    def forget_credential(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.credential_path.unlink()

    # --- applied commands ---

    def was_applied(self, command_id: UUID) -> bool:
        return str(command_id) in self._applied

    def stored_result(self, command_id: UUID) -> CommandResult | None:
        """The result recorded for an applied command (None while it runs or when lost)."""
        entry = self._applied.get(str(command_id))
        return CommandResult.model_validate(entry["result"]) if entry else None

    def mark_applied(self, command_id: UUID) -> None:
        """Record a command as applied before applying it: at most once, even across a crash."""
        self._applied[str(command_id)] = None
        self._save_applied()

    def record_result(self, result: CommandResult) -> None:
        """Keep a command's result until the server has it (and after, for re-deliveries)."""
        self._applied[str(result.id)] = {
            "result": result.model_dump(mode="json"),
            "reported": False,
        }
        self._save_applied()

    def mark_reported(self, command_id: UUID) -> None:
        """The server received the result."""
        entry = self._applied.get(str(command_id))
        if entry and not entry.get("reported"):
            entry["reported"] = True
            self._save_applied()

    def unreported_results(self) -> list[CommandResult]:
        """Results recorded but not yet delivered (the agent stopped in between)."""
        return [
            CommandResult.model_validate(entry["result"])
            for entry in self._applied.values()
            if entry and not entry.get("reported")
        ]

    def _save_applied(self) -> None:
        while len(self._applied) > MAX_REMEMBERED_COMMANDS:
            self._applied.popitem(last=False)
        write_private(self.dir / APPLIED_FILE, json.dumps({"applied": self._applied}))

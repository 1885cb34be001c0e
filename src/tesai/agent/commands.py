"""Command handlers: what the agent does for each ``Command.kind``.

Every handler returns a ``CommandResult`` and never raises: a failure is a result with
``ok=False`` and a reason code in ``detail``. Cluster commands go to ``tesai.agent.ray_node``
when that module is installed; without it they fail with ``ray_node_unavailable``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from tesai.protocol.v1 import (
    MAX_NODES,
    MAX_STR,
    REASON_BAD_ARGS,
    REASON_RAY_NODE_UNAVAILABLE,
    REASON_UNKNOWN_COMMAND,
    Command,
    CommandResult,
    DeviceStatus,
    NodeState,
    VerifyArgs,
)

log = logging.getLogger(__name__)

Verifier = Callable[[VerifyArgs], Awaitable[CommandResult]]


def load_ray_node() -> ModuleType | None:
    """``tesai.agent.ray_node`` when it is installed (and imports), else None."""
    try:
        return importlib.import_module("tesai.agent.ray_node")
    except ImportError as exc:
        log.debug("tesai.agent.ray_node unavailable: %s", exc)
        return None


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a ray_node function, sync (in a thread: it may run `ray start`) or async."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)


def _result_from(command: Command, value: Any) -> CommandResult:
    """A CommandResult from whatever the ray_node function returned."""
    if isinstance(value, CommandResult):
        return value.model_copy(update={"id": command.id})
    if isinstance(value, NodeState):
        ok = value.state in ("starting", "running", "stopped")
        return CommandResult(
            id=command.id, ok=ok, detail=value.reason, data=value.model_dump(mode="json")
        )
    if isinstance(value, dict):
        return CommandResult(id=command.id, ok=bool(value.get("ok", True)), data=value)
    return CommandResult(id=command.id, ok=True)


class CommandHandlers:
    """Dispatch by kind. ``status`` is the device status heartbeats report (drain/undrain)."""

    def __init__(self, verifier: Verifier, ray_node: ModuleType | None = None) -> None:
        self._verifier = verifier
        self.ray_node = ray_node
        self.status: DeviceStatus = "ready"

    async def handle(self, command: Command) -> CommandResult:
        """Apply one command; never raises."""
        try:
            if command.kind == "verify":
                try:
                    args = VerifyArgs.model_validate(command.args)
                except ValidationError as exc:
                    return _failed(command, REASON_BAD_ARGS, str(exc))
                return (await self._verifier(args)).model_copy(update={"id": command.id})
            if command.kind == "drain":
                self.status = "draining"
                return CommandResult(id=command.id, ok=True, detail="draining")
            if command.kind == "undrain":
                self.status = "ready"
                return CommandResult(id=command.id, ok=True, detail="ready")
            if command.kind in ("join_cluster", "leave_cluster"):
                return await self._cluster(command)
            return _failed(command, REASON_UNKNOWN_COMMAND, command.kind)
        except Exception as exc:  # a handler bug must not kill the agent loop
            log.exception("command %s (%s) failed", command.id, command.kind)
            return _failed(command, "command_failed", f"{type(exc).__name__}: {exc}")

    async def _cluster(self, command: Command) -> CommandResult:
        fn = getattr(self.ray_node, command.kind, None) if self.ray_node else None
        if fn is None:
            return _failed(command, REASON_RAY_NODE_UNAVAILABLE, "this agent cannot run Ray nodes")
        return _result_from(command, await _call(fn, command.args))

    async def node_states(self) -> list[NodeState]:
        """The Ray nodes this agent runs (empty without ray_node)."""
        fn = getattr(self.ray_node, "node_states", None) if self.ray_node else None
        if fn is None:
            return []
        try:
            states = await _call(fn)
        except Exception:
            log.exception("ray_node.node_states failed")
            return []
        return [NodeState.model_validate(s) for s in list(states)[:MAX_NODES]]

    async def stop_all(self) -> None:
        """Stop every cluster node (SIGTERM path); best effort."""
        fn = getattr(self.ray_node, "stop_all", None) if self.ray_node else None
        if fn is None:
            return
        try:
            await _call(fn)
        except Exception:
            log.exception("stopping Ray nodes failed")


def _failed(command: Command, reason: str, detail: str = "") -> CommandResult:
    text = f"{reason}: {detail}" if detail else reason
    return CommandResult(id=command.id, ok=False, detail=text[:MAX_STR])

"""Command handlers: what the agent does for each ``Command.kind``.

Every handler returns a ``CommandResult`` and never raises: a failure is a result with
``ok=False`` and a reason code in ``detail``. Cluster commands go to the agent's node runtime
(``tesai.agent.node_runtime``: containers or host processes); without one they fail with
``ray_node_unavailable``.
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

from tesai.agent.node_runtime import NodeRuntime, runtime_for
from tesai.protocol.v1 import (
    MAX_NODES,
    MAX_STR,
    REASON_BAD_ARGS,
    REASON_RAY_NODE_UNAVAILABLE,
    REASON_UNKNOWN_COMMAND,
    Command,
    CommandResult,
    DeviceStatus,
    HardwareSpec,
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


def load_node_runtime(owner: str, setting: str | None = None) -> NodeRuntime | None:
    """The node runtime the agent's setting names (``tesai.agent.node_runtime.runtime_for``);
    None when the setting is not one we know (logged: no node runs rather than a guess)."""
    try:
        return runtime_for(setting, owner=owner)
    except ValueError as exc:
        log.error("no cluster nodes will run here: %s", exc)
        return None


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a runtime's method, sync (in a thread: it may run `ray start`) or async."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    return await asyncio.to_thread(fn, *args)


def _result_from(command: Command, value: Any) -> CommandResult:
    """A CommandResult from whatever the runtime returned."""
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
    """Dispatch by kind. ``status`` is the device status heartbeats report (drain/undrain);
    ``runtime`` runs the cluster nodes (None: this agent runs none)."""

    def __init__(self, verifier: Verifier, runtime: NodeRuntime | None = None) -> None:
        self._verifier = verifier
        self.runtime = runtime
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
        if self.runtime is None:
            return _failed(command, REASON_RAY_NODE_UNAVAILABLE, "this agent cannot run Ray nodes")
        fn = (
            self.runtime.join_cluster
            if command.kind == "join_cluster"
            else self.runtime.leave_cluster
        )
        return _result_from(command, await _call(fn, command.args))

    def set_hardware(self, hardware: HardwareSpec) -> None:
        """Tell the runtime the device's declared resources (after the probe)."""
        if self.runtime is not None:
            self.runtime.set_hardware(hardware)

    async def recover(self) -> list[NodeState]:
        """Nodes this agent ran before a restart, still there (kept running); best effort."""
        if self.runtime is None:
            return []
        try:
            states = await _call(self.runtime.recover)
        except Exception:
            log.exception("recovering this agent's nodes failed")
            return []
        return [NodeState.model_validate(s) for s in list(states)[:MAX_NODES]]

    async def node_states(self) -> list[NodeState]:
        """The Ray nodes this agent runs (empty without a runtime)."""
        if self.runtime is None:
            return []
        try:
            states = await _call(self.runtime.node_states)
        except Exception:
            log.exception("reading node states failed")
            return []
        return [NodeState.model_validate(s) for s in list(states)[:MAX_NODES]]

    async def stop_all(self) -> None:
        """Stop every cluster node (SIGTERM path); best effort."""
        if self.runtime is None:
            return
        try:
            await _call(self.runtime.stop_all)
        except Exception:
            log.exception("stopping Ray nodes failed")


def _failed(command: Command, reason: str, detail: str = "") -> CommandResult:
    text = f"{reason}: {detail}" if detail else reason
    return CommandResult(id=command.id, ok=False, detail=text[:MAX_STR])

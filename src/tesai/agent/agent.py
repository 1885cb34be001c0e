"""The agent loop: join once, then heartbeat at the server's interval, apply commands, rotate.

``Agent.run`` returns a process exit code:

- ``EXIT_OK`` (0): stopped by SIGTERM/SIGINT after telling the server (``POST /leave``).
- ``EXIT_CONFIG`` (2): no stored credential and no join token.
- ``EXIT_JOIN_REJECTED`` (3): the server refused the join token (unknown, used or expired).
- ``EXIT_CREDENTIAL_REVOKED`` (4): a heartbeat got 401 with the stored credential; the file is
  moved aside so a new join token can be used.

An unreachable control plane is never fatal: calls are retried with exponential backoff and full
jitter (cap 30 s), or after the server's ``Retry-After`` when it says how long (an overloaded
server, or one that cannot reach its cache, answers 503 with one), and a restarted server
finds the agent still heartbeating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from tesai.agent import AGENT_VERSION
from tesai.agent.backoff import BACKOFF_CAP_S, backoff_delay, retry_after_s, retry_delay
from tesai.agent.commands import CommandHandlers, load_node_runtime
from tesai.agent.http import agent_client
from tesai.agent.metrics import AgentMetrics, MetricsServer, find_dcgm_exporter
from tesai.agent.netprobe import BANDWIDTH_BYTES, probe_network
from tesai.agent.probe import probe_hardware
from tesai.agent.proof import HonestProver, ProofWork, Prover, work_summary
from tesai.agent.state import AgentState, Credential
from tesai.agent.telemetry import Sampler
from tesai.protocol.proof import PROOF_VERSION
from tesai.protocol.v1 import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    HEARTBEAT_PATH,
    JOIN_PATH,
    LEAVE_PATH,
    MAX_COMMANDS,
    PROOF_COMMIT_PATH,
    PROOF_REVEAL_PATH,
    PROOF_START_PATH,
    ROTATE_PATH,
    Command,
    CommandResult,
    CredentialRotation,
    DeviceStatus,
    HardwareSpec,
    Heartbeat,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
    LeaveRequest,
    NetworkProbe,
    NodeState,
    ProofChallenge,
    ProofCommitment,
    ProofOpeningRequest,
    ProofReveal,
    ProofStart,
    VerificationOutcome,
    VerifyArgs,
    WireModel,
)

log = logging.getLogger("tesai.agent")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_JOIN_REJECTED = 3
EXIT_CREDENTIAL_REVOKED = 4

ROTATE_BEFORE = timedelta(hours=1)
LEAVE_TIMEOUT_S = 3.0
VERIFY_POST_ATTEMPTS = 6


class _ProofNotDelivered(Exception):
    """A step of the proof exchange the server refused, or never got."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AgentExit(Exception):
    """Stop the agent with ``code``; ``reason`` is what the provider reads."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class AgentConfig:
    """How to run the agent (the CLI fills it)."""

    server_url: str
    state_dir: Path
    join_token: str | None = None
    metrics_port: int = 9400
    """Local /metrics port; 0 turns the endpoint off."""
    metrics_addr: str = "0.0.0.0"
    dcgm_exporter_url: str | None = None
    """Relay this dcgm-exporter's /metrics (``auto``: the default address, if one answers)."""
    net_probe_interval_s: float = 1800.0
    bandwidth_bytes: int = BANDWIDTH_BYTES
    request_timeout_s: float = 10.0
    backoff_cap_s: float = BACKOFF_CAP_S
    use_gpu_proof: bool = True
    local_address: str | None = None
    """Source address of connections to the control plane (None: the system's choice)."""


def _problem(response: httpx.Response) -> str:
    """``code: detail`` from a problem+json body, else the status line."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        code = body.get("code") or body.get("title") or response.status_code
        detail = body.get("detail") or ""
        return f"{code}: {detail}".strip(": ")
    return f"HTTP {response.status_code}"


def _is_retryable(response: httpx.Response) -> bool:
    return response.status_code >= 500 or response.status_code in (408, 429)


def _retry_after(response: httpx.Response | None) -> float | None:
    """The server's ``Retry-After`` on a refusal it wants retried (503, 429)."""
    if response is None or response.status_code not in (429, 503):
        return None
    return retry_after_s(response.headers)


class Agent:
    """One agent process's life: join, heartbeat, commands, shutdown."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = AgentState(config.state_dir)
        # Containers of this agent carry its instance id: several agents may share a host.
        self.handlers = CommandHandlers(
            self._verify, load_node_runtime(owner=self.state.instance_id())
        )
        self.prover: Prover = HonestProver(use_gpu=config.use_gpu_proof)
        self.hardware: HardwareSpec | None = None
        self.credential: Credential | None = None
        self.net: NetworkProbe | None = None
        self.nodes: list[NodeState] = []
        """Latest state of this agent's Ray nodes, refreshed off the heartbeat path."""
        self.interval_s = DEFAULT_HEARTBEAT_INTERVAL_S
        self.seq = 0
        self._pending_acks: dict[UUID, None] = {}
        self._pending_results: dict[UUID, CommandResult] = {}
        self._running: dict[UUID, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._nodes_changed = asyncio.Event()
        self._verify_lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        self._retired_clients: list[httpx.AsyncClient] = []
        self._sampler: Sampler | None = None
        self.metrics = AgentMetrics()
        self._metrics_server: MetricsServer | None = None
        self.stopped_by_signal = False

    # --- plumbing ---

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None
        return self._client

    def open_client(self) -> None:
        """(Re)open the HTTP client for the current interval: its idle connections must
        expire before the server's, which the server sizes by the interval
        (``tesai.agent.http``)."""
        if self._client is not None:
            self._retired_clients.append(self._client)  # other tasks may still use it
        self._client = agent_client(
            self.config.server_url,
            interval_s=self.interval_s,
            timeout_s=self.config.request_timeout_s,
            local_address=self.config.local_address,
        )

    def _set_interval(self, interval_s: float) -> None:
        if interval_s != self.interval_s:
            self.interval_s = interval_s
            self.open_client()

    async def close_clients(self) -> None:
        for client in [*self._retired_clients, self._client]:
            if client is not None:
                await client.aclose()
        self._retired_clients.clear()

    def _auth(self) -> dict[str, str]:
        assert self.credential is not None
        return {"Authorization": f"Bearer {self.credential.device_token}"}

    def request_stop(self) -> None:
        """Stop at the next opportunity (the SIGTERM handler)."""
        self.stopped_by_signal = True
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early on stop or when a command result is ready to send."""
        self._wake.clear()
        waiters = [
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._wake.wait()),
        ]
        try:
            await asyncio.wait(
                waiters, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()

    # --- lifecycle ---

    async def run(self) -> int:
        """Run until stopped; the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.request_stop)
        self.open_client()
        background: list[asyncio.Task[None]] = []
        try:
            self.hardware = await asyncio.to_thread(probe_hardware, self.config.state_dir)
            log.info(
                "probed %s: %d GPU(s), %d cores, status %s%s",
                self.hardware.hostname,
                len(self.hardware.gpus),
                self.hardware.cpu_cores,
                self.hardware.probe_status,
                f" ({self.hardware.probe_reason})" if self.hardware.probe_reason else "",
            )
            self.handlers.set_hardware(self.hardware)
            self.nodes = await self.handlers.recover()
            if self.nodes:
                log.info("kept %d node(s) this agent ran before its restart", len(self.nodes))
            self._sampler = await asyncio.to_thread(Sampler)
            self.metrics.set_hardware(self.hardware)
            if self.config.metrics_port:
                try:
                    relay = await asyncio.to_thread(
                        find_dcgm_exporter, self.config.dcgm_exporter_url
                    )
                    self._metrics_server = MetricsServer(
                        self.metrics, self.config.metrics_port, self.config.metrics_addr, relay
                    )
                    log.info("metrics on :%d/metrics", self._metrics_server.port)
                except OSError as exc:
                    # Telemetry still reaches the server; only the local scrape is missing.
                    log.warning(
                        "no local /metrics: port %d unavailable (%s); pick --metrics-port",
                        self.config.metrics_port,
                        exc,
                    )
            self._requeue_unreported()
            if not await self._ensure_credential():
                return EXIT_OK  # stopped while joining
            background.append(asyncio.create_task(self._network_loop()))
            background.append(asyncio.create_task(self._nodes_loop()))
            await self._heartbeat_loop()
            await self._shutdown()
            return EXIT_OK
        except AgentExit as exc:
            log.error("agent stopped: %s", exc.reason)
            return exc.code
        finally:
            for task in background:
                task.cancel()
            for task in self._running.values():
                task.cancel()
            await self.close_clients()
            if self._sampler is not None:
                self._sampler.close()
            if self._metrics_server is not None:
                self._metrics_server.close()

    async def _shutdown(self) -> None:
        """SIGTERM: tell the server (best effort), stop cluster nodes."""
        log.info("shutting down: leaving the pool")
        try:
            response = await self.client.post(
                LEAVE_PATH,
                json=LeaveRequest(reason="agent_stopped").model_dump(mode="json"),
                headers=self._auth(),
                timeout=LEAVE_TIMEOUT_S,
            )
            if response.status_code >= 400:
                log.warning("leave refused: %s", _problem(response))
        except httpx.HTTPError as exc:
            log.warning("could not tell the server we are leaving: %s", exc)
        await self.handlers.stop_all()

    # --- join and credentials ---

    async def _ensure_credential(self) -> bool:
        """Load the stored credential or join with the token; False when stopped meanwhile."""
        stored = self.state.load_credential()
        if stored is not None and (
            stored.server_url.rstrip("/") == self.config.server_url.rstrip("/")
            or not self.config.join_token
        ):
            self.credential = stored
            log.info("using the stored credential of device %s", stored.device_id)
            return True
        if not self.config.join_token:
            raise AgentExit(
                EXIT_CONFIG,
                f"no device credential in {self.state.dir} and no join token: "
                "create a device (tesai device add) and pass --token",
            )
        assert self.hardware is not None
        with contextlib.suppress(httpx.HTTPError):
            # RTT only: the bandwidth endpoint needs the credential we are about to get.
            self.hardware.net = await probe_network(self.client, {}, 0)
        request = JoinRequest(
            join_token=self.config.join_token,
            hardware=self.hardware,
            agent_version=AGENT_VERSION,
            ray_version=_ray_version(),
            agent_instance_id=self.state.instance_id(),
        )
        attempt = 0
        while not self._stop.is_set():
            try:
                response = await self.client.post(JOIN_PATH, json=request.model_dump(mode="json"))
            except httpx.HTTPError as exc:
                response = None
                log.warning("join: control plane unreachable (%s)", exc)
            joined: JoinResponse | None = None
            if response is not None and response.status_code < 300:
                try:
                    joined = JoinResponse.model_validate(response.json())
                except ValueError as exc:
                    log.warning("unreadable join response: %s", exc)
            if joined is not None:
                self.credential = Credential(
                    server_url=self.config.server_url,
                    device_id=joined.device_id,
                    device_token=joined.device_token,
                    token_expires_at=joined.token_expires_at,
                )
                self.state.save_credential(self.credential)
                self._set_interval(joined.heartbeat_interval_s)
                log.info("joined as device %s", joined.device_id)
                return True
            if response is not None and response.status_code >= 300 and not _is_retryable(response):
                raise AgentExit(EXIT_JOIN_REJECTED, f"join refused: {_problem(response)}")
            delay = retry_delay(attempt, _retry_after(response), cap=self.config.backoff_cap_s)
            await self._sleep(delay)
            attempt += 1
        return False

    async def rotate_credential(self) -> None:
        """Trade the device token for a new one; keeps the old on failure (retried later)."""
        assert self.credential is not None
        try:
            response = await self.client.post(ROTATE_PATH, headers=self._auth())
        except httpx.HTTPError as exc:
            log.warning("credential rotation failed: %s", exc)
            return
        if response.status_code >= 300:
            log.warning("credential rotation refused: %s", _problem(response))
            return
        rotation = CredentialRotation.model_validate(response.json())
        self.credential = self.credential.model_copy(
            update={
                "device_token": rotation.device_token,
                "token_expires_at": rotation.token_expires_at,
            }
        )
        self.state.save_credential(self.credential)
        log.info("credential rotated; valid until %s", rotation.token_expires_at.isoformat())

    def _revoked(self, response: httpx.Response) -> AgentExit:
        path = self.state.credential_path
        with contextlib.suppress(OSError):
            path.replace(path.with_name("credential.revoked.json"))
        return AgentExit(
            EXIT_CREDENTIAL_REVOKED,
            f"the server rejected this device's credential ({_problem(response)}): it was "
            "revoked, it expired while the agent was away, or the device was removed. Create a "
            "new join token (tesai device join-token, or the console) and run the agent with "
            "--token to join again.",
        )

    # --- heartbeats ---

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            beat = await self._build_heartbeat()
            try:
                response = await self.client.post(
                    HEARTBEAT_PATH,
                    content=beat.model_dump_json(),
                    headers=self._auth() | {"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s (retrying)", exc)
                await self._sleep(backoff_delay(failures, cap=self.config.backoff_cap_s))
                failures += 1
                continue
            if response.status_code == 401:
                raise self._revoked(response)
            if response.status_code >= 300:
                log.warning("heartbeat refused: %s", _problem(response))
                if not _is_retryable(response):
                    # A message the server cannot take must not wedge the loop.
                    self._forget_sent(beat)
                delay = retry_delay(failures, _retry_after(response), cap=self.config.backoff_cap_s)
                await self._sleep(delay)
                failures += 1
                continue
            if failures:
                log.info("control plane reachable again after %d failed heartbeat(s)", failures)
            failures = 0
            try:
                reply = HeartbeatResponse.model_validate(response.json())
            except ValueError as exc:  # not our server's answer (a proxy's page, say)
                log.warning("unreadable heartbeat response: %s", exc)
                await self._sleep(backoff_delay(failures, cap=self.config.backoff_cap_s))
                failures += 1
                continue
            self.seq += 1
            self._forget_sent(beat)
            self._set_interval(reply.interval_s)
            self._accept_commands(reply.commands)
            if reply.rotate_credential or self._expires_soon():
                await self.rotate_credential()
            if self._pending_acks or self._pending_results:
                continue  # report acks and results right away
            await self._sleep(self.interval_s - (time.monotonic() - started))

    def _expires_soon(self) -> bool:
        assert self.credential is not None
        expires = self.credential.token_expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return expires - datetime.now(UTC) < ROTATE_BEFORE

    async def _build_heartbeat(self) -> Heartbeat:
        assert self._sampler is not None
        telemetry = await asyncio.to_thread(self._sampler.sample, self.net)
        self.metrics.update(telemetry, self._sampler.last_xid)
        status: DeviceStatus = self.handlers.status
        reason = None
        if self.hardware is not None and self.hardware.probe_status == "error":
            status, reason = "error", self.hardware.probe_reason
        return Heartbeat(
            seq=self.seq,
            sent_at=datetime.now(UTC),
            status=status,
            reason=reason,
            telemetry=telemetry,
            nodes=self.nodes,
            acked_commands=list(self._pending_acks)[:MAX_COMMANDS],
            command_results=list(self._pending_results.values())[:MAX_COMMANDS],
        )

    def _forget_sent(self, beat: Heartbeat) -> None:
        for command_id in beat.acked_commands:
            self._pending_acks.pop(command_id, None)
        for result in beat.command_results:
            if self._pending_results.get(result.id) is result:
                del self._pending_results[result.id]
                self.state.mark_reported(result.id)

    # --- commands ---

    def _requeue_unreported(self) -> None:
        """Results applied before a restart but never delivered go out with the first beat."""
        for result in self.state.unreported_results():
            self._pending_results[result.id] = result

    def _accept_commands(self, commands: list[Command]) -> None:
        for command in commands:
            self._pending_acks[command.id] = None
            if command.id in self._running:
                continue
            if self.state.was_applied(command.id):
                # Delivered again (our ack was lost, or we restarted): never apply twice.
                stored = self.state.stored_result(command.id)
                if stored is not None:
                    self._pending_results[command.id] = stored
                log.info("command %s (%s) already applied; acknowledging", command.id, command.kind)
                continue
            self.state.mark_applied(command.id)
            log.info("applying command %s (%s)", command.id, command.kind)
            self._running[command.id] = asyncio.create_task(self._apply(command))

    async def _apply(self, command: Command) -> None:
        try:
            result = await self.handlers.handle(command)
            self.state.record_result(result)
            self._pending_results[command.id] = result
            if command.kind in ("join_cluster", "leave_cluster"):
                self._nodes_changed.set()
            log.info(
                "command %s (%s): %s%s",
                command.id,
                command.kind,
                "ok" if result.ok else "failed",
                f" ({result.detail})" if result.detail else "",
            )
            said = (result.data or {}).get("message") if not result.ok else None
            if said:
                # What Ray said about a failed start: the provider sees it here, the
                # control plane in the cluster's event.
                log.warning("command %s (%s): %s", command.id, command.kind, said)
            self._wake.set()
        finally:
            self._running.pop(command.id, None)

    async def _verify(self, args: VerifyArgs) -> CommandResult:
        """Prove compute for one challenge (``tesai.protocol.proof``): fetch the seed, compute
        and send the commitment, open the blocks the server names. ``ok`` means the server
        gave a verdict (``detail``: the reason code, or the device status)."""
        if args.proof_version != PROOF_VERSION:
            return CommandResult(
                id=args.challenge_id,
                ok=False,
                detail=f"proof_version_unsupported: {args.proof_version} (this agent: "
                f"{PROOF_VERSION})",
            )
        if any(node.state in ("starting", "running") for node in self.nodes):
            # Never on a customer's GPU: even the memory test could starve their work.
            return CommandResult(
                id=args.challenge_id,
                ok=False,
                detail="device_rented: no proof of compute while cluster nodes run here",
            )
        work: ProofWork | None = None
        try:
            async with self._verify_lock:
                await asyncio.to_thread(self.prover.prepare, args)
                challenge = ProofChallenge.model_validate(
                    await self._proof_call(
                        PROOF_START_PATH, ProofStart(challenge_id=args.challenge_id)
                    )
                )
                # The server's clock runs from its answer above to the commitment's arrival.
                work = await asyncio.to_thread(self.prover.compute, challenge)
                commitment = ProofCommitment(
                    challenge_id=args.challenge_id, root=work.root, report=work.report
                )
                opening = ProofOpeningRequest.model_validate(
                    await self._proof_call(PROOF_COMMIT_PATH, commitment)
                )
            log.info(
                "proof of compute: %s %.1f GFLOP/s in %.2f s (own measurement)",
                work.report.kind,
                work.report.timings.gflops,
                work.report.timings.gemm_s,
            )
            outcome = opening.outcome
            if outcome is None:
                openings = await asyncio.to_thread(self.prover.open, work, opening.blocks)
                outcome = VerificationOutcome.model_validate(
                    await self._proof_call(
                        PROOF_REVEAL_PATH,
                        ProofReveal(challenge_id=args.challenge_id, openings=openings),
                    )
                )
        except _ProofNotDelivered as exc:
            data = work_summary(work) if work is not None else None
            return CommandResult(id=args.challenge_id, ok=False, detail=exc.detail, data=data)
        return CommandResult(
            id=args.challenge_id,
            ok=True,
            detail=outcome.reason or outcome.status,
            data=work_summary(work) | outcome.model_dump(),
        )

    async def _proof_call(self, path: str, body: WireModel) -> Any:
        """POST one step of the proof, retrying what can be retried; the JSON answer.

        Raises ``_ProofNotDelivered`` when the server refuses it or stays unreachable.
        """
        content = body.model_dump_json()
        headers = self._auth() | {"Content-Type": "application/json"}
        for attempt in range(VERIFY_POST_ATTEMPTS):
            try:
                response = await self.client.post(path, content=content, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("proof of compute: %s failed: %s", path, exc)
                response = None
            if response is not None and response.status_code < 300:
                return response.json()
            if response is not None and not _is_retryable(response):
                raise _ProofNotDelivered(f"verification refused: {_problem(response)}")
            delay = retry_delay(attempt, _retry_after(response), cap=self.config.backoff_cap_s)
            await self._sleep(delay)
            if self._stop.is_set():
                break
        raise _ProofNotDelivered("verification_not_delivered")

    # --- cluster nodes ---

    async def _nodes_loop(self) -> None:
        """Refresh node states in the background: asking Ray can take seconds, and a slow
        answer must never delay a heartbeat past the server's grace period."""
        while not self._stop.is_set():
            self.nodes = await self.handlers.node_states()
            self._nodes_changed.clear()
            waiters = [
                asyncio.ensure_future(self._stop.wait()),
                asyncio.ensure_future(self._nodes_changed.wait()),
            ]
            try:
                await asyncio.wait(
                    waiters, timeout=self.interval_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waiters:
                    w.cancel()

    # --- network ---

    async def _network_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.net = await probe_network(
                    self.client, self._auth(), self.config.bandwidth_bytes
                )
                log.info(
                    "network: rtt %s ms, %s Mbit/s, tier %s",
                    self.net.rtt_ms,
                    self.net.bandwidth_mbps,
                    self.net.tier,
                )
            except Exception:
                log.exception("network probe failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.net_probe_interval_s)


def _ray_version() -> str | None:
    """The installed Ray's version, without importing Ray (slow and heavy)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


async def run_agent(config: AgentConfig) -> int:
    """Run an agent to completion; the exit code."""
    return await Agent(config).run()

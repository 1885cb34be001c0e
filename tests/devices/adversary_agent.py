"""A real agent process that cheats at proof of compute.

    python -m tests.devices.adversary_agent ATTACK --server URL --state-dir DIR [--delay S]

with the join token in ``TESAI_AGENT_TOKEN``. Everything but the proof and, where the attack
needs it, the hardware claim is the real agent (``tesai.agent.agent.Agent``): joining,
heartbeats, command delivery and the three proof calls. The attacks (``tests.devices.proofs``):

- ``sampled-entries``: a CPU host claiming an H100 that computes no products, only the
  entries it is asked to open;
- ``fabricated-timings``: a CPU host claiming an H100 that computes everything and reports an
  H100's timings;
- ``forward-to-helper``: a CPU host that forwards the challenge to a second machine (another
  process, ``--delay`` seconds away);
- ``replay``: proves once, then answers later challenges with that first proof;
- ``vram-liar``: claims an H100 with 80 GB while NVML on the host reports 24 GiB;
- ``honest``: the agent's own CPU prover (the control);
- ``ray-liar``: proves honestly, then answers every ``join_cluster`` with its node running
  and the whole cluster alive (Ray's count, as the real agent reports it), while it starts no
  Ray at all; its "dashboard" is ``--dashboard-port`` (default: a port nothing listens on);
- ``ray-sharer``: proves honestly; as a cluster's head it starts one real Ray node that also
  claims the node resources listed in ``--share-file`` (the other nodes', which colluding
  agents would pass along; the test writes them), so that one Ray node stands in for all; as a
  worker it starts nothing and reports its node running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import UUID

from tesai.agent import agent as agent_module
from tesai.agent.agent import Agent, AgentConfig
from tesai.agent.proof import HonestProver
from tesai.agent.telemetry import Sampler
from tesai.protocol.v1 import (
    GpuSpec,
    GpuTelemetry,
    HardwareSpec,
    NetworkProbe,
    NodeState,
    Telemetry,
)
from tests.devices.proofs import (
    H100,
    FabricatedTimings,
    ForwardToHelper,
    ReplayFirstProof,
    SampledEntriesOnly,
)

GiB = 1 << 30
CLAIMS_H100 = {"sampled-entries", "fabricated-timings", "vram-liar"}


def _claim_h100(real: Any) -> Any:
    def probe(*args: Any, **kwargs: Any) -> HardwareSpec:
        hw: HardwareSpec = real(*args, **kwargs)
        gpu = GpuSpec(index=0, uuid="GPU-fake-0", model=H100, memory_total_bytes=80 * GiB)
        return hw.model_copy(update={"gpus": [gpu]})

    return probe


class SmallGpuSampler(Sampler):
    """What NVML says on the host: a 24 GiB GPU."""

    def sample(self, net: NetworkProbe | None = None) -> Telemetry:
        t = super().sample(net)
        gpu = GpuTelemetry(index=0, uuid="GPU-fake-0", memory_total_bytes=24 * GiB)
        return t.model_copy(update={"gpus": [gpu]})


class NoRay:
    """The agent's node runtime (``tesai.agent.node_runtime.NodeRuntime``) for a liar:
    every node it is asked to run is reported running, with a head's count of 64 nodes
    alive; nothing is started."""

    isolation = "process"

    def __init__(self, dashboard_port: int) -> None:
        self.dashboard_port = dashboard_port
        self.nodes: dict[tuple[str, int], NodeState] = {}
        self.lock = threading.Lock()

    def join_cluster(self, args: Mapping[str, Any]) -> NodeState:
        head = args.get("role") == "head"
        state = NodeState(
            cluster_id=UUID(str(args["cluster_id"])),
            role="head" if head else "worker",
            state="running",
            ray_address=f"127.0.0.1:{self.dashboard_port + 1}",
            dashboard_port=self.dashboard_port if head else None,
            alive_nodes=64 if head else None,
        )
        with self.lock:
            self.nodes[(str(args["cluster_id"]), int(args.get("node_index", 0)))] = state
        return state

    def leave_cluster(self, args: Mapping[str, Any]) -> NodeState:
        with self.lock:
            mine = [k for k in self.nodes if k[0] == str(UUID(str(args["cluster_id"])))]
            left = [self.nodes.pop(k) for k in mine]
        role = left[0].role if left else "worker"
        return NodeState(cluster_id=UUID(str(args["cluster_id"])), role=role, state="stopped")

    def node_states(self) -> list[NodeState]:
        with self.lock:
            return list(self.nodes.values())

    def stop_all(self) -> None:
        with self.lock:
            self.nodes.clear()

    def set_hardware(self, hardware: object) -> None:
        pass

    def recover(self) -> list[NodeState]:
        return []


class OneRayForAll:
    """The ``ray-sharer`` runtime: the real node runtime for the head, whose ``ray start`` also
    claims the node resources in ``share_file`` (waited for); a ``NoRay`` for workers."""

    def __init__(self, real: Any, share_file: Path) -> None:
        self.real = real
        self.share_file = share_file
        self.liar = NoRay(_closed_port())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _shared(self) -> dict[str, float]:
        for _ in range(600):
            if self.share_file.exists():
                return {r: 1.0 for r in json.loads(self.share_file.read_text())}
            time.sleep(0.1)
        return {}

    def join_cluster(self, args: Mapping[str, Any]) -> NodeState:
        if args.get("role") != "head":
            return self.liar.join_cluster(args)
        resources = {**dict(args.get("resources") or {}), **self._shared()}
        state: NodeState = self.real.join_cluster({**args, "resources": resources})
        return state

    def leave_cluster(self, args: Mapping[str, Any]) -> NodeState:
        self.liar.leave_cluster(args)
        state: NodeState = self.real.leave_cluster(args)
        return state

    def node_states(self) -> list[NodeState]:
        return [*self.real.node_states(), *self.liar.node_states()]

    def stop_all(self) -> None:
        self.liar.stop_all()
        self.real.stop_all()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("attack")
    parser.add_argument("--server", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=4.0)
    parser.add_argument("--dashboard-port", type=int, default=0)
    parser.add_argument("--share-file", type=Path)
    opts = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if opts.attack in CLAIMS_H100:
        agent_module.probe_hardware = _claim_h100(agent_module.probe_hardware)  # type: ignore[attr-defined]
    if opts.attack == "vram-liar":
        agent_module.Sampler = SmallGpuSampler  # type: ignore[attr-defined,misc]
    provers: dict[str, Any] = {
        "sampled-entries": SampledEntriesOnly,
        "vram-liar": SampledEntriesOnly,
        "fabricated-timings": FabricatedTimings,
        "forward-to-helper": lambda: ForwardToHelper(delay_s=opts.delay),
        "replay": ReplayFirstProof,
        "honest": lambda: HonestProver(use_gpu=False),
        "ray-liar": lambda: HonestProver(use_gpu=False),
        "ray-sharer": lambda: HonestProver(use_gpu=False),
    }
    if opts.attack == "ray-liar":
        liar = NoRay(opts.dashboard_port or _closed_port())
        agent_module.load_node_runtime = lambda **_: liar  # type: ignore[attr-defined,assignment,return-value]
    if opts.attack == "ray-sharer":
        real_runtime = agent_module.load_node_runtime  # type: ignore[attr-defined]
        agent_module.load_node_runtime = lambda **kw: OneRayForAll(  # type: ignore[attr-defined]
            real_runtime(**kw), opts.share_file
        )
    config = AgentConfig(
        server_url=opts.server,
        state_dir=opts.state_dir,
        join_token=os.environ.get("TESAI_AGENT_TOKEN"),
        metrics_port=0,
        use_gpu_proof=False,
    )
    agent = Agent(config)
    agent.prover = provers[opts.attack]()
    return asyncio.run(agent.run())


if __name__ == "__main__":
    sys.exit(main())

"""The wire contract's bounds: oversized messages fail validation before anything is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from tesai.protocol.v1 import (
    MAX_GPUS,
    MAX_NODES,
    GpuTelemetry,
    Heartbeat,
    NodeState,
    ProofCommitment,
    ProofReveal,
    Telemetry,
)


def _beat(**telemetry: object) -> dict[str, object]:
    return {
        "seq": 1,
        "sent_at": datetime.now(UTC).isoformat(),
        "telemetry": {"cpu_percent": 1, "mem_used_bytes": 1, "mem_total_bytes": 2, **telemetry},
    }


def test_a_normal_heartbeat_round_trips() -> None:
    beat = Heartbeat.model_validate(_beat(gpus=[{"index": 0, "uuid": "GPU-a"}]))
    assert beat.status == "ready"
    assert Heartbeat.model_validate_json(beat.model_dump_json()) == beat


def test_unknown_fields_are_ignored_so_either_side_can_add_fields() -> None:
    beat = Heartbeat.model_validate({**_beat(), "from_the_future": 1})
    assert not hasattr(beat, "from_the_future")


@pytest.mark.parametrize(
    "bad",
    [
        _beat(gpus=[{"index": i, "uuid": f"GPU-{i}"} for i in range(MAX_GPUS + 1)]),
        _beat(gpus=[{"index": 0, "uuid": "x" * 513}]),
        _beat(cpu_percent=101),
        _beat(mem_used_bytes=-1),
        {**_beat(), "status": "hacked"},
        {**_beat(), "reason": "r" * 513},
        {
            **_beat(),
            "nodes": [{"cluster_id": str(uuid.uuid4()), "role": "head", "state": "running"}]
            * (MAX_NODES + 1),
        },
    ],
)
def test_oversized_or_malformed_heartbeats_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Heartbeat.model_validate(bad)


def test_proof_commitment_root_must_be_a_sha256_hex_and_openings_are_bounded() -> None:
    base = {
        "challenge_id": str(uuid.uuid4()),
        "root": "a" * 64,
        "report": {"kind": "cpu", "device_model": "cpu", "timings": {"gemm_s": 1, "gflops": 1}},
    }
    assert ProofCommitment.model_validate(base).root == "a" * 64
    with pytest.raises(ValidationError):
        ProofCommitment.model_validate({**base, "root": "not-hex"})
    opening = {"round": 0, "block": 0, "data": "AA==", "path": ["b" * 64]}
    with pytest.raises(ValidationError):
        ProofReveal.model_validate(
            {"challenge_id": base["challenge_id"], "openings": [opening] * 65}
        )
    with pytest.raises(ValidationError):
        ProofReveal.model_validate(
            {"challenge_id": base["challenge_id"], "openings": [opening | {"data": "A" * 20000}]}
        )


def test_models_are_constructible_in_code() -> None:
    t = Telemetry(
        cpu_percent=0,
        mem_used_bytes=0,
        mem_total_bytes=0,
        gpus=[GpuTelemetry(index=0, uuid="GPU-a")],
    )
    n = NodeState(cluster_id=uuid.uuid4(), role="worker", state="starting")
    assert t.gpus[0].xid_errors is None
    assert n.ray_address is None

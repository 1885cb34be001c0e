"""Which of the agents' claims are lies (``tesai.clusters.lies``), as plain data. What gathering
does with them on a real database and cache: test_ray_evidence.py; real agent processes:
test_ray_liveness_attacks.py."""

from __future__ import annotations

import uuid
from dataclasses import replace

from tesai.clusters.lies import Claim, caught_lies, episode_key

WORKER = Claim(
    node_id=uuid.uuid4(),
    device_id=uuid.uuid4(),
    cluster_id=uuid.uuid4(),
    head=False,
    lapsed=True,
    last_seen=None,
    head_answered=True,
)
HEAD = replace(WORKER, node_id=uuid.uuid4(), device_id=uuid.uuid4(), head=True)


def _codes(*claims: Claim) -> list[str]:
    return [c.code for c in caught_lies(claims, window_s=15)]


def test_a_node_reported_running_and_not_seen_for_the_window_is_a_lie() -> None:
    assert _codes(WORKER) == ["node_unverified"]
    [lie] = caught_lies([WORKER], window_s=15)
    assert lie.detail == (
        f"Worker node {WORKER.node_id} of cluster {WORKER.cluster_id}: reported running, "
        "not seen for over 15 s."
    )
    # Not yet past the window: no verdict.
    assert _codes(replace(WORKER, lapsed=False), replace(HEAD, lapsed=False)) == []


def test_a_worker_is_not_blamed_for_a_head_that_does_not_answer() -> None:
    assert _codes(replace(WORKER, head_answered=False)) == []
    # The head is: its Ray state is its own to serve.
    assert _codes(replace(HEAD, head_answered=False)) == ["node_unverified"]


def test_a_refused_claim_is_charged_with_why() -> None:
    shared = replace(WORKER, refused="node_resource_shared")
    moved = replace(HEAD, refused="node_address_mismatch")
    assert _codes(shared, moved) == ["node_resource_shared", "node_address_mismatch"]
    loopback = replace(HEAD, head_answered=False, refused="head_address_loopback")
    [lie] = caught_lies([loopback], window_s=15)
    assert (lie.code, lie.detail.endswith(": head_address_loopback.")) == (
        "head_address_refused",
        True,
    )
    # No address on our records is ours to keep, not the provider's lie about one.
    unknown = replace(HEAD, head_answered=False, refused="head_address_unknown")
    assert _codes(unknown) == ["node_unverified"]


def test_an_episode_lasts_until_the_node_is_seen_again() -> None:
    assert episode_key(WORKER) == episode_key(replace(WORKER, refused="node_resource_shared"))
    seen = replace(WORKER, last_seen=1_000.25)
    assert episode_key(seen) != episode_key(WORKER)
    assert episode_key(seen) != episode_key(replace(WORKER, last_seen=1_020.5))
    assert episode_key(seen) == episode_key(replace(seen, lapsed=False))

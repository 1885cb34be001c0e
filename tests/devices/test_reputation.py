"""Reputation follows evidence (``tesai.devices.reputation``): a failed check is an event with
its reason code on the device, lowers its reliability, and repeated ones disable it for an
admin to review; the provider reads why.

The arithmetic and the review rule are pure; the rest runs on a real database, through the
provider and admin API. Failed proofs end-to-end: test_verification.py and
test_proof_attacks.py; caught lies: tests/clusters/test_ray_evidence.py and
test_ray_liveness_attacks.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from tesai.devices.liveness import reliability_after_offences, reliability_score
from tesai.devices.models import DeviceEvent
from tesai.devices.reputation import (
    OFFENCES,
    PROOF_FAILURES,
    REVIEW_REASONS,
    record_offence,
    review_detail,
    review_reason,
)
from tesai.devices.rollups import update_reliability
from tesai.devices.states import REASONS
from tesai.runtime import Runtime
from tesai.tasks import TaskContext
from tests.devices.conftest import Pool, hardware
from tests.fixtures.auth import MakeUser


def test_an_offence_weighs_more_than_a_failure_while_rented() -> None:
    assert reliability_score(1.0, 0, 0) == 1.0
    assert reliability_score(1.0, 0, 1) == 0.8
    assert reliability_score(1.0, 0, 3) == 0.512
    for k in range(1, 12):
        assert reliability_score(1.0, 0, k) < reliability_score(1.0, k, 0)
        assert reliability_score(0.9, 2, k) < reliability_score(0.9, 2, k - 1)
    # Both kinds at once, on 90 % uptime: 0.9 / 1.2 × 0.8.
    assert reliability_score(0.9, 1, 1) == 0.6
    # The immediate penalty and the hourly recomputation agree.
    assert reliability_after_offences(1.0, 3) == reliability_score(1.0, 0, 3)
    assert reliability_after_offences(-1.0, 1) == 0.0


def test_a_device_is_reviewed_after_repeated_offences_named_by_their_kinds() -> None:
    assert review_reason(["node_unverified", "canary_failed"], 3) is None
    assert review_reason(["proof_sample_mismatch"] * 3, 3) == "proof_failures_review"
    mixed = ["proof_sample_mismatch", "node_unverified", "canary_failed"]
    assert review_reason(mixed, 3) == "offences_review"
    assert review_reason(mixed[:1], 0) == "proof_failures_review"  # at least one, always
    assert review_detail(["proof_replayed"] * 3, 7 * 86400) == (
        "3 failed proofs in 7 days; the last: proof_replayed."
    )
    assert review_detail(mixed, 86400) == (
        "3 offences in 1 days (1 canary_failed, 1 node_unverified, 1 proof_sample_mismatch);"
        " the last: canary_failed."
    )


def test_every_offence_and_review_has_a_sentence_people_read() -> None:
    assert REASONS.keys() >= OFFENCES
    assert REASONS.keys() >= REVIEW_REASONS
    assert PROOF_FAILURES < OFFENCES
    assert not REVIEW_REASONS & OFFENCES  # a review is no offence of its own


async def _events(pool: Pool, device_id: uuid.UUID) -> list[dict[str, Any]]:
    r = await pool.client.get(f"/api/v1/provider/devices/{device_id}/events", headers=pool.provider)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()
    return events


async def _device(pool: Pool, device_id: uuid.UUID) -> dict[str, Any]:
    r = await pool.client.get(f"/api/v1/provider/devices/{device_id}", headers=pool.provider)
    assert r.status_code == 200, r.text
    device: dict[str, Any] = r.json()["device"]
    return device


async def test_caught_lies_lower_reliability_and_three_disable_the_device_for_review(
    pool: Pool, runtime: Runtime, make_user: MakeUser, ctx: TaskContext
) -> None:
    joined = await pool.joined(hardware(cores=2))
    device_id = joined.device_id
    assert (await _device(pool, device_id))["status"] == "verifying"
    settings = runtime.settings

    # One caught lie: the device stays where it is, its reliability drops, the provider
    # reads the code and the numbers.
    async with runtime.sessionmaker.begin() as s:
        await record_offence(
            s, settings, device_id, "node_unverified", "Worker node n1 of cluster c1."
        )
    device = await _device(pool, device_id)
    assert (device["status"], device["reliability"]) == ("verifying", 0.8)
    [latest, *_] = await _events(pool, device_id)
    assert latest["reason"] == "node_unverified"
    assert latest["offence"] is True
    assert (latest["from_status"], latest["to_status"]) == ("verifying", "verifying")
    assert latest["message"].endswith("Worker node n1 of cluster c1.")
    assert latest["message"].startswith(REASONS["node_unverified"])

    # Other kinds count together: the third in the window disables it for review.
    async with runtime.sessionmaker.begin() as s:
        await record_offence(s, settings, device_id, "head_address_refused", "loopback")
    assert (await _device(pool, device_id))["status"] == "verifying"
    async with runtime.sessionmaker.begin() as s:
        await record_offence(s, settings, device_id, "canary_failed", "Node n2.")
    device = await _device(pool, device_id)
    assert (device["status"], device["status_reason"]) == ("disabled", "offences_review")
    assert device["reliability"] == 0.512
    review, last, *_ = await _events(pool, device_id)
    assert (review["reason"], review["offence"]) == ("offences_review", False)
    assert review["message"].endswith(
        "3 offences in 7 days (1 canary_failed, 1 head_address_refused, 1 node_unverified);"
        " the last: canary_failed."
    )
    assert last["reason"] == "canary_failed"

    # Only an admin lifts it.
    r = await pool.client.post(
        f"/api/v1/provider/devices/{device_id}/enable", headers=pool.provider
    )
    assert (r.status_code, r.json()["code"]) == (403, "disabled_by_admin")
    assert "offences_review" in r.json()["detail"]
    # The hourly recomputation keeps the penalty for 30 days.
    await update_reliability(ctx)
    assert (await _device(pool, device_id))["reliability"] == 0.512
    _, admin = await make_user(roles=("admin",))
    r = await pool.client.post(f"/api/v1/internal/devices/{device_id}/enable", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "verifying"


async def test_offences_older_than_the_review_window_do_not_add_up(
    pool: Pool, runtime: Runtime
) -> None:
    joined = await pool.joined(hardware(cores=2))
    settings = runtime.settings
    for _ in range(2):
        async with runtime.sessionmaker.begin() as s:
            await record_offence(s, settings, joined.device_id, "node_unverified")
    async with runtime.sessionmaker.begin() as s:
        await s.execute(
            update(DeviceEvent)
            .where(DeviceEvent.device_id == joined.device_id)
            .values(at=DeviceEvent.at - timedelta(seconds=settings.offence_review_window_s + 60))
        )
    async with runtime.sessionmaker.begin() as s:
        await record_offence(s, settings, joined.device_id, "node_unverified")
    device = await _device(pool, joined.device_id)
    assert device["status"] == "verifying"
    assert device["reliability"] == 0.512


async def test_a_code_that_is_no_offence_is_refused(pool: Pool, runtime: Runtime) -> None:
    joined = await pool.joined(hardware(cores=2))
    async with runtime.sessionmaker.begin() as s:
        with pytest.raises(ValueError, match="not an offence"):
            await record_offence(s, runtime.settings, joined.device_id, "missed_heartbeats")

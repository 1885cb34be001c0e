"""The device state machine and the sweeper's pure decisions, without I/O."""

from __future__ import annotations

import pytest

from tesai.devices.liveness import (
    accumulate,
    billing_floors,
    decide_sweep,
    minute_of,
    reliability_score,
    rollup_averages,
    run_start,
    seconds_up,
    silent_after_grace,
    unhealthy,
    uptime_fraction,
    watch_resumed,
)
from tesai.devices.models import DeviceStatus as S
from tesai.devices.states import ALLOWED, REASONS, InvalidTransition, check_transition


def test_every_state_has_its_moves() -> None:
    assert set(ALLOWED) == set(S)


@pytest.mark.parametrize(
    ("current", "target", "reason"),
    [
        (S.pending, S.verifying, "agent_joined"),
        (S.verifying, S.online, "verification_passed"),
        (S.verifying, S.rejected, "gpu_model_mismatch"),
        (S.online, S.busy, "rented"),
        (S.busy, S.online, "released"),
        (S.online, S.offline, "missed_heartbeats"),
        (S.busy, S.offline, "missed_heartbeats"),
        (S.offline, S.online, "heartbeat_resumed"),
        (S.online, S.disabled, "disabled_by_provider"),
        (S.disabled, S.online, "enabled_by_provider"),
        (S.rejected, S.verifying, "agent_joined"),
    ],
)
def test_allowed_moves(current: S, target: S, reason: str) -> None:
    t = check_transition(current, target, reason, "17 s.")
    assert t.to_status is target
    assert t.message == REASONS[reason] + " 17 s."


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.pending, S.online),  # never listed without proof of compute
        (S.rejected, S.online),
        (S.pending, S.busy),
        (S.offline, S.busy),
        (S.disabled, S.busy),
        (S.rejected, S.offline),
    ],
)
def test_forbidden_moves(current: S, target: S) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, target, "missed_heartbeats")


def test_new_devices_start_pending_and_reasons_are_known() -> None:
    assert check_transition(None, S.pending, "created").from_status is None
    with pytest.raises(InvalidTransition):
        check_transition(None, S.online, "created")
    with pytest.raises(InvalidTransition):
        check_transition(S.online, S.offline, "no_such_reason")


STORM = {"storm_fraction": 0.5, "storm_min_devices": 3, "storm_grace_s": 60.0}


def test_sweep_marks_the_silent_few() -> None:
    d = decide_sweep(now=100, tracked=10, silent=[("a", 80.0)], storm_since=None, **STORM)
    assert d.offline == [("a", 80.0)]
    assert not d.holding


def test_sweep_with_nobody_silent_clears_a_storm() -> None:
    d = decide_sweep(now=100, tracked=10, silent=[], storm_since=90.0, **STORM)
    assert d.offline == []
    assert d.storm_since is None


def test_storm_holds_until_its_grace() -> None:
    silent = [(str(i), 50.0) for i in range(6)]
    d = decide_sweep(now=100, tracked=10, silent=silent, storm_since=None, **STORM)
    assert d.holding
    assert d.offline == []
    assert d.storm_since == 100
    assert "6 of 10" in d.message
    d = decide_sweep(now=159, tracked=10, silent=silent, storm_since=100, **STORM)
    assert d.holding
    d = decide_sweep(now=160, tracked=10, silent=silent, storm_since=100, **STORM)
    assert not d.holding
    assert len(d.offline) == 6


def test_small_fleets_and_small_shares_are_no_storm() -> None:
    # 2 of 3 is over half, but below the minimum count.
    d = decide_sweep(now=100, tracked=3, silent=[("a", 1.0), ("b", 1.0)], storm_since=None, **STORM)
    assert not d.holding
    assert len(d.offline) == 2
    # 5 of 10 is not more than half.
    silent = [(str(i), 1.0) for i in range(5)]
    d = decide_sweep(now=100, tracked=10, silent=silent, storm_since=None, **STORM)
    assert not d.holding


def test_minute_accumulators() -> None:
    acc, closed = accumulate(None, 10, {"cpu": 10.0, "gutil": 50.0})
    acc, closed = accumulate(acc, 10, {"cpu": 30.0})
    assert closed is None
    assert acc["n"] == 2
    acc2, closed = accumulate(acc, 11, {"cpu": 1.0})
    assert closed is not None
    assert closed["m"] == 10
    avg = rollup_averages(closed)
    assert avg["cpu"] == 20.0
    assert avg["gutil"] == 50.0
    assert avg["gtemp"] is None
    assert acc2["n"] == 1
    assert minute_of(125.0) == 2


def test_seconds_up_and_reliability() -> None:
    assert seconds_up(12, 5.0) == 60
    assert seconds_up(20, 5.0) == 60
    assert seconds_up(3, 5.0) == 15
    assert uptime_fraction(43200, 86400) == 0.5
    assert reliability_score(1.0, 0) == 1.0
    assert reliability_score(1.0, 1) == pytest.approx(0.8333, abs=1e-4)
    assert reliability_score(0.5, 0) == 0.5
    assert reliability_score(0.9, 3) < reliability_score(0.9, 1) < reliability_score(0.9, 0)


def test_a_run_of_beats_continues_within_the_window_and_restarts_after_a_silence() -> None:
    assert run_start(None, None, 100.0, 7.5) == 100.0  # nothing heard before (a restart)
    assert run_start(95.0, 40.0, 100.0, 7.5) == 40.0
    assert run_start(92.5, 40.0, 100.0, 7.5) == 40.0
    assert run_start(92.4, 40.0, 100.0, 7.5) == 100.0


def test_a_device_never_heard_is_not_healthy() -> None:
    heard = {"fresh": 99.0, "stale": 90.0, "unknown": None}
    assert unhealthy(heard, now=100.0, window_s=7.5) == ["stale", "unknown"]


def test_billing_starts_at_the_whole_second_after_a_run_start() -> None:
    assert billing_floors({"a": 100.2, "b": 100.9, "c": 101.0}) == {101: ["a", "b", "c"]}
    assert billing_floors({"a": 99.0, "b": 99.01}) == {99: ["a"], 100: ["b"]}


def test_a_sweeper_back_after_more_than_a_grace_was_not_watching() -> None:
    assert not watch_resumed(None, 100.0, 15.0)
    assert not watch_resumed(90.0, 100.0, 15.0)
    assert watch_resumed(80.0, 100.0, 15.0)


def test_silence_counts_from_when_watching_began_again() -> None:
    candidates = [("old", 10.0), ("rewatched", 10.0)]
    assert silent_after_grace(candidates, {"rewatched": 95.0}, 85.0) == [("old", 10.0)]
    assert silent_after_grace(candidates, {"rewatched": 80.0}, 85.0) == candidates

"""The device state machine and the sweeper's pure decisions, without I/O."""

from __future__ import annotations

import pytest

from tesai.agent.backoff import BACKOFF_CAP_S
from tesai.agent.http import keepalive_expiry_s
from tesai.devices.liveness import (
    AGENT_RETRY_CAP_S,
    RecentOffline,
    Unobserved,
    accumulate,
    after_marking,
    billing_floors,
    covered_since,
    decide_sweep,
    gap_class,
    intake_stretch,
    merge_parts,
    merge_unobserved,
    minute_of,
    reliability_score,
    rented_failures,
    rollup_averages,
    run_start,
    seconds_up,
    server_keep_alive_s,
    silence_start,
    silent_after_grace,
    split_by_minute,
    storm_base,
    unhealthy,
    uptime_fraction,
    uptime_span,
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


def test_a_stop_the_agent_announced_is_not_a_failure_while_rented() -> None:
    # Ctrl-C: the agent said goodbye (``agent_left``) while rented; a crash said nothing.
    assert rented_failures({"agent_left": 1}) == 0
    assert reliability_score(1.0, rented_failures({"agent_left": 3})) == 1.0
    assert rented_failures({"agent_left": 2, "missed_heartbeats": 1}) == 1
    assert reliability_score(1.0, rented_failures({"missed_heartbeats": 1})) == pytest.approx(
        0.8333, abs=1e-4
    )


DAY = 86400.0


def test_uptime_is_measured_over_the_devices_life_up_to_its_recorded_minutes() -> None:
    now = 60.0 * 29_000_000 + 30  # half a minute into a minute
    settle = 80.0  # grace 15 s + flush every 60 s + 5 s
    # Six minutes old: from its creation to the end of the last minute surely written
    # (the minute before this one may not be flushed yet, this one is still open).
    start, end = uptime_span(now, created=now - 360, window_s=30 * DAY, settle_s=settle) or (0, 0)
    assert (start, end) == (now - 360, now - 90)
    # Up all the time: its first half minute and four whole ones, 100 %.
    assert uptime_fraction(30 + 4 * 60, end - start) == 1.0
    # Older than 30 days: the last 30 days.
    span = uptime_span(now, created=now - 40 * DAY, window_s=30 * DAY, settle_s=settle)
    assert span is not None
    assert span[0] == now - 30 * DAY
    # Under a minute old: nothing of it is recorded yet, so there is nothing to measure.
    assert uptime_span(now, created=now - 60, window_s=30 * DAY, settle_s=settle) is None


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


def test_silence_counts_from_when_watching_began_again() -> None:
    candidates = [("old", 10.0), ("rewatched", 10.0)]
    assert silent_after_grace(candidates, {"rewatched": 95.0}, 85.0) == [("old", 10.0)]
    assert silent_after_grace(candidates, {"rewatched": 80.0}, 85.0) == candidates


def test_storm_slices_count_against_the_fleet_as_it_was_when_they_began() -> None:
    """An outage's silent devices arrive a slice per sweep; each slice leaves the watched
    set once marked. Judged against a shrinking set, no slice is a storm (33 of 300, 68 of
    267, ...); judged against the 300 watched when the markings began, the third is."""
    recent = None
    tracked = 300
    held = False
    for now, slice_ in ((100.0, 33), (101.0, 68), (102.0, 55)):
        base, before = storm_base(recent, now=now, tracked=tracked, window_s=15.0)
        silent = [(f"{now}-{i}", 80.0) for i in range(slice_)]
        d = decide_sweep(now=now, tracked=base, silent=silent, storm_since=None,
                         marked_before=before, **STORM)  # fmt: skip
        if d.holding:
            held = True
            assert base == 300
            break
        recent = after_marking(recent, now=now, tracked=tracked, marked=slice_, window_s=15.0)
        tracked -= slice_
    assert held
    # A run of markings older than the window is forgotten.
    old = RecentOffline(since=50.0, base=300, marked=140)
    assert storm_base(old, now=100.0, tracked=160, window_s=15.0) == (160, 0)


W = Unobserved(start=100.0, end=120.0, why="test")


def test_silence_is_not_judged_over_an_unobserved_window() -> None:
    kw = {"now": 130.0, "grace_s": 15.0, "allowance_s": 30.0, "max_window_s": 120.0}
    # Heard shortly before the window: counts again from its end plus the allowance.
    assert silence_start(97.0, W, **kw) == 150.0
    # Already past its grace when the window began: judged as usual.
    assert silence_start(84.0, W, **kw) == 84.0
    # Heard after the window: as usual.
    assert silence_start(125.0, W, **kw) == 125.0
    # While a window is open nobody heard before it is judged, until it is too long.
    still = Unobserved(100.0, None, "test")
    assert silence_start(97.0, still, **kw) == float("inf")
    assert silence_start(97.0, still, **(kw | {"now": 221.0})) == 97.0


def test_a_window_starting_while_devices_are_still_due_back_joins_the_earlier_one() -> None:
    later = Unobserved(140.0, 160.0, "api")
    assert merge_unobserved(W, later, now=160.0, keep_s=45.0) == Unobserved(100.0, 160.0, "api")
    far = Unobserved(200.0, 210.0, "api")
    assert merge_unobserved(W, far, now=210.0, keep_s=45.0) == far
    opened = Unobserved(140.0, None, "stalled")
    assert merge_unobserved(W, opened, now=150.0, keep_s=45.0).end is None


def test_many_beats_coming_around_late_stretch_the_grace() -> None:
    kw = {"min_late": 3, "max_stretch": 4.0}
    assert [gap_class(g, healthy_s=7.5, grace_s=15.0) for g in (5, 8, 15, 16, 31, 61)] == [
        0, 1, 1, 2, 3, 4,
    ]  # fmt: skip
    # 600 beats on time: no stretch.
    assert intake_stretch([0] * 5, [600, 0, 0, 0, 0], **kw) == 1.0
    # Many late within the grace (an intake falling behind): double it.
    assert intake_stretch([0] * 5, [540, 60, 0, 0, 0], **kw) == 2.0
    # Many later than the grace (accepted only because it was stretched): quadruple it.
    assert intake_stretch([0] * 5, [500, 60, 40, 0, 0], **kw) == 4.0
    # One flaky device is too few to stretch anybody's grace.
    assert intake_stretch([0] * 5, [598, 2, 0, 0, 0], **kw) == 1.0
    assert intake_stretch([0] * 5, [3000, 20, 0, 0, 0], **kw) == 1.0  # under 1 %
    # Counters that went backwards (a lost cache): no judgement.
    assert intake_stretch([10, 0, 0, 0, 0], [0, 5, 5, 0, 0], **kw) == 1.0


def test_uptime_covers_healthy_gaps_and_the_control_planes_own_outages() -> None:
    kw = {
        "interval_s": 5.0,
        "stretch": 1.0,
        "window": None,
        "grace_s": 15.0,
        "allowance_s": 30.0,
        "max_window_s": 120.0,
    }
    assert covered_since(95.0, 100.0, **kw) == 95.0
    assert covered_since(None, 100.0, **kw) == 95.0
    # A device silent for 40 s vouches for one interval only ...
    assert covered_since(60.0, 100.0, **kw) == 95.0
    # ... unless the silence was our outage and it came back in the time it was given.
    assert covered_since(97.0, 140.0, **(kw | {"window": W})) == 97.0
    assert covered_since(97.0, 170.0, **(kw | {"window": W})) == 165.0
    assert covered_since(92.0, 100.0, **(kw | {"stretch": 2.0})) == 92.0


def test_seconds_split_at_minute_boundaries() -> None:
    assert split_by_minute(50.0, 130.0) == {0: 10.0, 1: 60.0, 2: 10.0}
    assert split_by_minute(60.0, 65.0) == {1: 5.0}
    assert split_by_minute(65.0, 65.0) == {}


def test_the_parts_of_a_minute_add_up() -> None:
    """A device offline at :30 and back at :50 has two parts in that minute: 30 s and 10 s
    up add up to 40 s (a replacing flush would have kept the last 10 s)."""
    first = {"m": 1, "n": 6, "s": {"cpu": 60.0}, "c": {"cpu": 6}, "u": 30.0, "l": 90.0}
    second = {"m": 1, "n": 2, "s": {"cpu": 40.0}, "c": {"cpu": 2}, "u": 10.0, "l": 119.0}
    merged = merge_parts([first, second], 5.0)
    assert merged["seconds_up"] == 40
    assert rollup_averages(merged)["cpu"] == 12.5
    assert merge_parts([first, second, {"u": 50.0}], 5.0)["seconds_up"] == 60
    legacy = {"m": 1, "n": 3, "s": {}, "c": {}}  # closed before uptime was covered time
    assert merge_parts([legacy], 5.0)["seconds_up"] == 15


def test_agents_let_connections_go_before_the_server_and_retry_within_the_allowance() -> None:
    for interval in (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0):
        assert interval + 1 < keepalive_expiry_s(interval) < server_keep_alive_s(interval)
    assert BACKOFF_CAP_S == AGENT_RETRY_CAP_S

"""The pure arithmetic behind SLA reports and incident timelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tesai.ops.reports import Change, periods, status_time

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


def test_up_and_down_time_with_a_repaired_fault() -> None:
    changes = [
        Change(at(900), "online", "offline", "missed_heartbeats"),
        Change(at(1000), "offline", "online", "heartbeat_resumed"),
        Change(at(5000), "online", "busy", "rented"),
    ]
    t = status_time("online", changes, at(0), at(10_000))
    assert (t.up_seconds, t.down_seconds) == (9900, 100)
    assert [f.reason for f in t.faults] == ["missed_heartbeats"]
    assert t.repairs == [100]


def test_disabled_and_drained_time_counts_neither_way() -> None:
    changes = [
        Change(at(100), "online", "disabled", "disabled_by_provider"),
        Change(at(600), "disabled", "online", "enabled_by_provider"),
        Change(at(700), "busy", "draining", "drain_requested"),
        Change(at(800), "draining", "drained", "drained"),
    ]
    t = status_time("online", changes, at(0), at(1000))
    assert (t.up_seconds, t.down_seconds) == (100 + 100 + 100, 0)


def test_a_device_created_inside_the_window_and_still_down_at_its_end() -> None:
    changes = [
        Change(at(200), "pending", "online", "verification_passed"),
        Change(at(300), "online", "busy", "rented"),
        Change(at(400), "busy", "offline", "agent_left"),
    ]
    t = status_time(None, changes, at(0), at(1000))
    assert (t.up_seconds, t.down_seconds) == (200, 600)
    assert [f.reason for f in t.faults] == ["agent_left"]
    assert t.repairs == []


def test_degraded_periods_close_at_the_end_when_open() -> None:
    changes = [
        (at(0), "provisioning", "running"),
        (at(10), "running", "degraded"),
        (at(15), "degraded", "degraded"),
        (at(40), "degraded", "running"),
        (at(90), "running", "degraded"),
    ]
    assert periods(changes, "degraded", at(100)) == [(at(10), at(40)), (at(90), at(100))]

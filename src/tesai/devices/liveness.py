"""Pure liveness arithmetic: the sweeper's decision, observed time, per-minute accumulators,
reliability.

No I/O here; ``tesai.devices.sweeper``, ``tesai.devices.agents`` (heartbeats) and
``tesai.clusters.usage`` (metering) feed these functions data read from the cache and the
database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tesai.protocol.v1 import Telemetry


@dataclass(frozen=True)
class SweepDecision:
    """What one sweep should do."""

    offline: list[tuple[str, float]]
    """(device id, last heartbeat time) of the devices to mark offline now."""
    holding: bool
    """True while storm protection holds back a mass offline marking."""
    storm_since: float | None
    """When the current storm began (None when there is none)."""
    message: str
    """Why, for logs and operators."""


def is_storm(silent: int, tracked: int, *, fraction: float, min_devices: int) -> bool:
    """Whether ``silent`` of ``tracked`` devices going quiet at once looks like our own outage."""
    if tracked <= 0 or silent < min_devices:
        return False
    return silent > fraction * tracked


@dataclass(frozen=True)
class RecentOffline:
    """Devices marked offline since ``since``, out of the ``base`` devices watched then.

    A control-plane outage makes devices fall silent a slice at a time (their last beats
    are spread over an interval); each slice alone is small, and once marked it leaves
    the watched set. Judged against the fleet as it was when the markings began, the
    slices add up to the storm they are.
    """

    since: float
    base: int
    marked: int


def storm_base(
    recent: RecentOffline | None, *, now: float, tracked: int, window_s: float
) -> tuple[int, int]:
    """(devices watched when the current run of markings began, devices marked since):
    what a sweep's silent devices are added to and compared with."""
    if recent is None or now - recent.since > window_s:
        return tracked, 0
    return max(recent.base, tracked), recent.marked


def after_marking(
    recent: RecentOffline | None, *, now: float, tracked: int, marked: int, window_s: float
) -> RecentOffline | None:
    """The run of markings after ``marked`` more devices went offline at ``now``."""
    if marked <= 0:
        return recent if recent is not None and now - recent.since <= window_s else None
    if recent is None or now - recent.since > window_s:
        return RecentOffline(now, tracked, marked)
    return RecentOffline(recent.since, recent.base, recent.marked + marked)


def decide_sweep(
    *,
    now: float,
    tracked: int,
    silent: Sequence[tuple[str, float]],
    storm_since: float | None,
    storm_fraction: float,
    storm_min_devices: int,
    storm_grace_s: float,
    marked_before: int = 0,
) -> SweepDecision:
    """Decide which silent devices go offline in this sweep.

    ``silent`` are the watched devices whose silence is past the grace; ``tracked`` is how
    many devices were watched when the current run of offline markings began (see
    ``storm_base``), and ``marked_before`` how many that run has marked already. When
    those and the silent ones together are more than ``storm_fraction`` of ``tracked``
    (and at least ``storm_min_devices``), nobody is marked: that is what a Redis flush, a
    network blip on our side or our own outage looks like. The hold ends when the
    condition clears or after ``storm_grace_s``, when the silence is treated as real.
    """
    if not silent:
        return SweepDecision([], False, None, "all devices heartbeating")
    going = len(silent) + marked_before
    if is_storm(going, tracked, fraction=storm_fraction, min_devices=storm_min_devices):
        since = storm_since if storm_since is not None else now
        held_s = now - since
        share = 100.0 * going / tracked
        before = f" ({marked_before} already marked)" if marked_before else ""
        if held_s < storm_grace_s:
            return SweepDecision(
                [],
                True,
                since,
                f"storm protection: {going} of {tracked} devices ({share:.0f} %) silent "
                f"at once{before}; holding for {held_s:.0f} s of at most {storm_grace_s:.0f} s",
            )
        return SweepDecision(
            list(silent),
            False,
            since,
            f"storm persisted {held_s:.0f} s (≥ {storm_grace_s:.0f} s): marking "
            f"{len(silent)} of {tracked} devices offline",
        )
    return SweepDecision(
        list(silent), False, None, f"{len(silent)} of {tracked} devices missed heartbeats"
    )


# --- observed time ---------------------------------------------------------------------------
#
# Only what the control plane observed is billed, and a control plane that was not watching
# (stopped, restarting, its cache lost) observed nothing: that time is neither billed nor
# counted as anyone's silence. A device's *run* is a sequence of heartbeats none of them more
# than the healthy window after the one before; a node is billed from the later of its
# watermark and the start of its device's run, and only while the device is healthy.

AGENT_RETRY_CAP_S = 30.0
"""The longest an agent waits between two tries of a failed call (``tesai.agent.backoff``'s
cap): after its own outage the control plane gives devices this long to be back, on top of
the grace."""

HEALTHY_INTERVALS = 1.5
"""A device is healthy (its nodes billed) while its last heartbeat is at most this many
heartbeat intervals old; a longer gap between two heartbeats ends its run."""

K = TypeVar("K")


def server_keep_alive_s(heartbeat_interval_s: float) -> int:
    """How long the API keeps an idle HTTP connection open: comfortably longer than the
    heartbeat interval, and longer than the agent keeps it (``tesai.agent.http``), so an
    agent never sends its beat on a connection the server is closing."""
    return max(5, math.ceil(2 * heartbeat_interval_s + 5))


def healthy_window_s(heartbeat_interval_s: float) -> float:
    """How old a device's last heartbeat may be for the device to count as healthy."""
    return HEALTHY_INTERVALS * heartbeat_interval_s


def run_start(last_beat: float | None, started: float | None, now: float, window_s: float) -> float:
    """When the run of the heartbeat arriving at ``now`` began.

    ``last_beat`` and ``started`` describe the device's previous heartbeat and its run, as
    far as this control plane knows (None: it knows of none, e.g. after its own restart).
    A beat within ``window_s`` of the previous one continues that run; any other starts a
    new run at ``now``: the silence before it was not observed.
    """
    if last_beat is None or started is None or now - last_beat > window_s:
        return now
    return started


def unhealthy(last_heard: Mapping[K, float | None], *, now: float, window_s: float) -> list[K]:
    """The devices not heard within ``window_s`` before ``now``.

    A device with no last heartbeat at all (absent from the liveness set, as every device is
    right after the control plane's own restart or a cache flush) is not healthy either:
    nobody has observed it.
    """
    return [d for d, at in last_heard.items() if at is None or at < now - window_s]


def billing_floors(run_starts: Mapping[K, float]) -> dict[int, list[K]]:
    """Devices grouped by the whole second their nodes' billing may start from, which is
    their run's start rounded up (a part of a second before the first beat was not
    observed)."""
    floors: dict[int, list[K]] = {}
    for device, start in run_starts.items():
        floors.setdefault(math.ceil(start), []).append(device)
    return floors


def silent_after_grace(
    candidates: Iterable[tuple[str, float]], rewatched: Mapping[str, float], cutoff: float
) -> list[tuple[str, float]]:
    """``candidates`` (last heartbeat before ``cutoff``) less the devices the control plane
    began watching again after ``cutoff`` (its restart, a lost cache): their grace to beat
    again counts from that moment, not from their last heartbeat."""
    return [(d, at) for d, at in candidates if rewatched.get(d, -math.inf) < cutoff]


# --- what the control plane could not observe ------------------------------------------------
#
# Silence is judged only over time the control plane observed. It observes nothing while its
# intake (the heartbeat endpoint and the cache behind it) is down, or while its sweeper
# cannot watch: an *unobserved window*. A device heard shortly before such a window is not
# judged for it: its silence counts again only from the window's end plus the longest an
# agent's retry backoff lasts (``RETRY_CAP_S``), so agents still backing off when the
# control plane returns are back in time. Its uptime is not cut by the window either.


@dataclass(frozen=True)
class Unobserved:
    """A time the control plane could not observe heartbeats."""

    start: float
    end: float | None
    """None while it lasts."""
    why: str

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "why": self.why}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Unobserved | None:
        if not data:
            return None
        end = data.get("end")
        return cls(float(data["start"]), None if end is None else float(end), str(data["why"]))


def merge_unobserved(
    previous: Unobserved | None, new: Unobserved, *, now: float, keep_s: float
) -> Unobserved:
    """``new`` joined to ``previous`` when it begins before the devices ``previous`` let off
    were due back (its end plus ``keep_s``): they are still backing off, and the new window
    must cover them too. Otherwise ``new`` alone."""
    if previous is None:
        return new
    previous_end = now if previous.end is None else previous.end
    if new.start > previous_end + keep_s:
        return new
    end = None if new.end is None else max(new.end, previous_end)
    return Unobserved(min(previous.start, new.start), end, new.why)


def silence_start(
    last: float,
    window: Unobserved | None,
    *,
    now: float,
    grace_s: float,
    allowance_s: float,
    max_window_s: float,
) -> float:
    """When the silence of a device last heard at ``last`` starts to count.

    A device already past its grace when the window began, or heard after it ended, is
    judged from ``last``. One heard shortly before is not judged while the window lasts
    (``inf``), nor until ``allowance_s`` after it ended. A window still open after
    ``max_window_s`` no longer protects anybody: that long a silence is treated as real.
    """
    if window is None or last <= window.start - grace_s:
        return last
    if window.end is None:
        return math.inf if now - window.start <= max_window_s else last
    if last >= window.end:
        return last
    return max(last, window.end + allowance_s)


LATE_STRETCH = (1.0, 2.0, 4.0, 4.0, 4.0)
"""The grace stretch when enough beats arrived in each gap class (see ``gap_class``): beats
late but within the grace double it, beats later than that quadruple it."""
LATE_SHARE = 0.01
"""A gap class counts once this share of the beats accepted (and ``min_late`` of them) fell
in it: a lag of the intake makes many devices late, one flaky device does not."""


def gap_class(gap_s: float, *, healthy_s: float, grace_s: float) -> int:
    """How late a beat came after its device's previous one: 0 within the healthy window,
    1 within the grace, 2 within two graces, 3 within four, 4 later."""
    if gap_s <= healthy_s:
        return 0
    if gap_s <= grace_s:
        return 1
    if gap_s <= 2 * grace_s:
        return 2
    return 3 if gap_s <= 4 * grace_s else 4


def intake_stretch(
    first: Sequence[int], last: Sequence[int], *, min_late: int, max_stretch: float
) -> float:
    """How much to stretch the grace, from the intake's counts of accepted beats per gap
    class at the start (``first``) and the end (``last``) of a recent span.

    An overloaded control plane answers late, its agents time out and back off: many
    devices' beats come around later than usual, and silence is judged with a longer
    grace while they do. Devices that died send nothing and stretch nobody's grace; one
    flaky device is too few. Counters that went backwards (a lost cache): 1.
    """
    deltas = [b - a for a, b in zip(first, last, strict=True)]
    if any(d < 0 for d in deltas):
        return 1.0
    enough = max(min_late, LATE_SHARE * sum(deltas))
    for late in range(len(deltas) - 1, 0, -1):
        if deltas[late] >= enough:
            return min(max_stretch, LATE_STRETCH[late])
    return 1.0


def covered_since(
    previous: float | None,
    now: float,
    *,
    interval_s: float,
    stretch: float,
    window: Unobserved | None,
    grace_s: float,
    allowance_s: float,
    max_window_s: float,
) -> float:
    """Since when the heartbeat arriving at ``now`` shows its device up (uptime, not billing).

    The time since the device's previous beat counts when that beat was within the healthy
    window (stretched while the intake is slow), or when the gap is the control plane's own
    unobserved window and the device came back in the time it was given. Otherwise the beat
    vouches for one interval before it, as far back as the previous beat.
    """
    if previous is None or previous >= now:
        return now - interval_s if previous is None else now
    if now - previous <= healthy_window_s(interval_s) * stretch:
        return previous
    start = silence_start(
        previous,
        window,
        now=now,
        grace_s=grace_s,
        allowance_s=allowance_s,
        max_window_s=max_window_s,
    )
    if start > previous and now - start <= grace_s:
        return previous
    return max(previous, now - interval_s)


def split_by_minute(start: float, end: float) -> dict[int, float]:
    """Seconds of ``(start, end]`` in each epoch minute they touch."""
    out: dict[int, float] = {}
    t = start
    while t < end:
        minute = minute_of(t)
        upto = min(end, (minute + 1) * 60.0)
        out[minute] = out.get(minute, 0.0) + (upto - t)
        t = upto
    return out


# --- per-minute accumulators ---------------------------------------------------------------


def minute_of(ts: float) -> int:
    """The epoch minute a timestamp falls in."""
    return int(ts // 60)


def telemetry_sample(t: Telemetry) -> dict[str, float]:
    """The numbers of one heartbeat that the minute rollups average."""
    sample: dict[str, float] = {"cpu": t.cpu_percent, "mem": float(t.mem_used_bytes)}
    utils = [g.utilization_pct for g in t.gpus if g.utilization_pct is not None]
    mems = [g.memory_used_bytes for g in t.gpus if g.memory_used_bytes is not None]
    temps = [g.temperature_c for g in t.gpus if g.temperature_c is not None]
    powers = [g.power_w for g in t.gpus if g.power_w is not None]
    if utils:
        sample["gutil"] = sum(utils) / len(utils)
    if mems:
        sample["gmem"] = float(sum(mems))
    if temps:
        sample["gtemp"] = max(temps)
    if powers:
        sample["gpow"] = sum(powers)
    return sample


def accumulate(
    acc: dict[str, Any] | None, minute: int, sample: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Add one heartbeat to a device's running minute accumulator.

    Returns the new accumulator and, when the beat starts a new minute, the closed one.
    An accumulator is ``{"m": minute, "n": beats, "s": {metric: sum}, "c": {metric: count},
    "u": seconds up}`` (the caller adds the seconds its beat covers to ``u``).
    """
    closed = None
    if acc is None or acc.get("m") != minute:
        closed = acc
        acc = {"m": minute, "n": 0, "s": {}, "c": {}, "u": 0.0}
    acc["n"] += 1
    for k, v in sample.items():
        acc["s"][k] = acc["s"].get(k, 0.0) + v
        acc["c"][k] = acc["c"].get(k, 0) + 1
    return acc, closed


def seconds_up(beats: int, interval_s: float) -> int:
    """Seconds of a minute a device was up, from how many heartbeats it sent in it (the
    record of accumulators written before uptime was covered time, ``u``)."""
    return max(0, min(60, round(beats * interval_s)))


def part_id(acc: Mapping[str, Any]) -> str:
    """The name of an accumulator among the parts of its minute: closing the same one twice
    (a heartbeat's rollover racing the sweeper) writes the same part."""
    return f"a{acc.get('f', acc['m'] * 60)!r}"


def merge_parts(parts: Iterable[Mapping[str, Any]], interval_s: float) -> dict[str, Any]:
    """One minute of a device from its parts: accumulators closed in it (a device that went
    offline and came back within the minute has two) and uptime credited to it by a later
    beat. Seconds up add up, to at most 60."""
    merged: dict[str, Any] = {"n": 0, "s": {}, "c": {}, "u": 0.0, "t": None, "tm": -math.inf}
    for part in parts:
        n = int(part.get("n", 0))
        merged["n"] += n
        merged["u"] += float(part["u"]) if "u" in part else n * interval_s
        for k, v in part.get("s", {}).items():
            merged["s"][k] = merged["s"].get(k, 0.0) + v
        for k, v in part.get("c", {}).items():
            merged["c"][k] = merged["c"].get(k, 0) + v
        if part.get("t") is not None and float(part.get("l", 0.0)) >= merged["tm"]:
            merged["t"], merged["tm"] = part["t"], float(part.get("l", 0.0))
    merged["seconds_up"] = max(0, min(60, round(merged["u"])))
    return merged


def rollup_averages(acc: dict[str, Any]) -> dict[str, float | None]:
    """Averages of each metric over a closed accumulator (None when never reported)."""
    out: dict[str, float | None] = {}
    for k in ("cpu", "mem", "gutil", "gmem", "gtemp", "gpow"):
        n = acc["c"].get(k, 0)
        out[k] = acc["s"][k] / n if n else None
    return out


# --- reliability ---------------------------------------------------------------------------
#
# Uptime is measured over the time a device has existed, at most the last 30 days, and only
# as far as its minutes are written: the minute in progress lives in the cache, and a closed
# one reaches PostgreSQL at the next flush. Counting those as down made a device a few
# minutes old look 5-20 % down while it never missed a beat.

UPTIME_WINDOW_S = 30 * 86400.0
"""Uptime and reliability look back this far (or over the device's life, if shorter)."""
FLUSH_MARGIN_S = 5.0
"""Time for a flush's own run, on top of its interval."""
ANNOUNCED_STOPS = frozenset({"agent_left"})
"""Reasons a rented device goes offline that are no failure: its agent stopped cleanly and
said so (``tesai.devices.agents.leave``), as on Ctrl-C or a restart. Its cluster replaces
the node at once, without waiting out a grace; the time it stays away still counts as down."""


def uptime_settle_s(*, grace_s: float, flush_interval_s: float) -> float:
    """How long after a minute ends its uptime is surely written: the minute closes at its
    device's first beat after it (within the grace), or when the sweeper finds the device
    silent past its grace; the next flush writes it."""
    return grace_s + flush_interval_s + FLUSH_MARGIN_S


def uptime_span(
    now: float, *, created: float, window_s: float, settle_s: float
) -> tuple[float, float] | None:
    """(start, end) of the time a device's uptime is measured over: the last ``window_s``
    of its life (since ``created``), up to the end of the newest minute surely written
    ``settle_s`` after it ended. None while no such minute exists (a device a minute or two
    old): there is nothing to measure yet, which is not 0 %."""
    start = max(now - window_s, created)
    end = minute_of(now - settle_s) * 60.0
    return (start, end) if end > start else None


def uptime_fraction(seconds_up_total: int, window_s: float) -> float:
    """Uptime over a window as a fraction in [0, 1]."""
    if window_s <= 0:
        return 0.0
    return max(0.0, min(1.0, seconds_up_total / window_s))


def rented_failures(offline_while_rented: Mapping[str, int]) -> int:
    """Failures while rented, from how often a device went from ``busy`` to ``offline`` for
    each reason: a stop its agent announced (``ANNOUNCED_STOPS``) is not one."""
    return sum(n for reason, n in offline_while_rented.items() if reason not in ANNOUNCED_STOPS)


OFFENCE_FACTOR = 0.8
"""Each offence of the last 30 days (a failed proof, a failed canary, a caught lie:
``tesai.devices.reputation``) multiplies reliability by this."""


def reliability_score(uptime: float, failures_while_rented: int, offences: int = 0) -> float:
    """Reliability in [0, 1]: uptime (``uptime_span``), discounted 20 % per failure while
    rented (``rented_failures``), then multiplied by ``OFFENCE_FACTOR`` per offence.

    A failure while rented costs a customer a node (and a self-healing round), so it weighs
    far more than idle downtime: one failure takes a 100 %-up device to 0.83, three to 0.625.
    An offence is worse than bad luck, so it weighs more than a failure while rented, and
    k offences more than k such failures (0.8, 0.64, 0.512 against 0.83, 0.71, 0.625).
    """
    uptime = max(0.0, min(1.0, uptime))
    score = uptime / (1.0 + 0.2 * max(0, failures_while_rented))
    return round(score * OFFENCE_FACTOR ** max(0, offences), 4)


def reliability_after_offences(reliability: float, offences: int) -> float:
    """``reliability`` lowered at once for ``offences`` new ones (the hourly recomputation,
    ``reliability_score``, counts them again from the events)."""
    return round(max(0.0, reliability) * OFFENCE_FACTOR ** max(0, offences), 4)

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


def decide_sweep(
    *,
    now: float,
    tracked: int,
    silent: Sequence[tuple[str, float]],
    storm_since: float | None,
    storm_fraction: float,
    storm_min_devices: int,
    storm_grace_s: float,
) -> SweepDecision:
    """Decide which silent devices go offline in this sweep.

    ``silent`` are the watched devices whose last heartbeat is older than the grace;
    ``tracked`` is how many devices are watched in all. When the silent ones are more than
    ``storm_fraction`` of ``tracked`` (and at least ``storm_min_devices``), nobody is marked:
    that is what a Redis flush, a network blip on our side or our own outage looks like. The
    hold ends when the condition clears or after ``storm_grace_s``, when the silence is
    treated as real.
    """
    if not silent:
        return SweepDecision([], False, None, "all devices heartbeating")
    if is_storm(len(silent), tracked, fraction=storm_fraction, min_devices=storm_min_devices):
        since = storm_since if storm_since is not None else now
        held_s = now - since
        share = 100.0 * len(silent) / tracked
        if held_s < storm_grace_s:
            return SweepDecision(
                [],
                True,
                since,
                f"storm protection: {len(silent)} of {tracked} devices ({share:.0f} %) silent "
                f"at once; holding for {held_s:.0f} s of at most {storm_grace_s:.0f} s",
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

HEALTHY_INTERVALS = 1.5
"""A device is healthy (its nodes billed) while its last heartbeat is at most this many
heartbeat intervals old; a longer gap between two heartbeats ends its run."""

K = TypeVar("K")


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


def watch_resumed(last_sweep: float | None, now: float, grace_s: float) -> bool:
    """Whether the sweeper finds it was away: its previous sweep is more than ``grace_s``
    old. Nobody watched the heartbeats meanwhile (the control plane was down or
    restarting), so no device's silence may be judged from that time."""
    return last_sweep is not None and now - last_sweep > grace_s


def silent_after_grace(
    candidates: Iterable[tuple[str, float]], rewatched: Mapping[str, float], cutoff: float
) -> list[tuple[str, float]]:
    """``candidates`` (last heartbeat before ``cutoff``) less the devices the control plane
    began watching again after ``cutoff`` (its restart, a lost cache): their grace to beat
    again counts from that moment, not from their last heartbeat."""
    return [(d, at) for d, at in candidates if rewatched.get(d, -math.inf) < cutoff]


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
    An accumulator is ``{"m": minute, "n": beats, "s": {metric: sum}, "c": {metric: count}}``.
    """
    closed = None
    if acc is None or acc.get("m") != minute:
        closed = acc
        acc = {"m": minute, "n": 0, "s": {}, "c": {}}
    acc["n"] += 1
    for k, v in sample.items():
        acc["s"][k] = acc["s"].get(k, 0.0) + v
        acc["c"][k] = acc["c"].get(k, 0) + 1
    return acc, closed


def seconds_up(beats: int, interval_s: float) -> int:
    """Seconds of a minute a device was up, from how many heartbeats it sent in it."""
    return max(0, min(60, round(beats * interval_s)))


def rollup_averages(acc: dict[str, Any]) -> dict[str, float | None]:
    """Averages of each metric over a closed accumulator (None when never reported)."""
    out: dict[str, float | None] = {}
    for k in ("cpu", "mem", "gutil", "gmem", "gtemp", "gpow"):
        n = acc["c"].get(k, 0)
        out[k] = acc["s"][k] / n if n else None
    return out


# --- reliability ---------------------------------------------------------------------------


def uptime_fraction(seconds_up_total: int, window_s: float) -> float:
    """Uptime over a window as a fraction in [0, 1]."""
    if window_s <= 0:
        return 0.0
    return max(0.0, min(1.0, seconds_up_total / window_s))


def reliability_score(uptime: float, failures_while_rented: int) -> float:
    """Reliability in [0, 1]: 30-day uptime, discounted 20 % per failure while rented.

    A failure while rented costs a customer a node (and a self-healing round), so it weighs
    far more than idle downtime: one failure takes a 100 %-up device to 0.83, three to 0.625.
    """
    uptime = max(0.0, min(1.0, uptime))
    return round(uptime / (1.0 + 0.2 * max(0, failures_while_rented)), 4)

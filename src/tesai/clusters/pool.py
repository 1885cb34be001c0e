"""The pool as placement sees it: devices read from the database into plain values.

``load_pool`` reads the whole pool (offers, replacements). The create and quote paths use
``PoolCache`` instead: one ``PoolIndex`` per API process, brought up to date before each
placement by reading only the devices changed since its watermark (``devices.change_xact``,
stamped by a trigger in the writing transaction; the watermark is the reading statement's
snapshot: its ``xmax`` and the transactions it saw in progress, whose rows are read again next
time, so a change committed later is never missed). The index only *picks* candidates: a quote
or a booking locks and re-checks the chosen rows and tells the index what it found, and the
partial unique index on live ``cluster_nodes.device_id`` stays the arbiter, so a stale index
costs a retry, never a double booking nor a quote naming a rented device.

Why the index cannot stay stale (each was once a way it did, for up to the 10-minute resync):

- The reading transaction's own changes. The read usually runs in the request's transaction,
  and once that has written (the batch's Idempotency-Key claim, an earlier placement round's
  row locks) PostgreSQL leaves its own id out of the snapshot's in-progress list while
  ``xmax`` moves past it: the booking it then stamps would be below the next watermark and
  never read. The own id, when it has one, is read again like any transaction in progress.
- A device freed without a change to its row. Renting always changes the row (``online`` →
  ``busy``); but a device that came back ``online`` while its lost node was still live is
  freed by that node's release alone. Such rows (online, not bookable) are read again on
  every refresh until they are bookable or leave the pool.
- A local hold outliving the database's word. A hold only keeps a free device out of the
  index; one on a device the database shows rented is dropped, never released into it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.clusters.models import ClusterNode, DeviceReservation
from tesai.clusters.schemas import ClusterRequest
from tesai.devices.models import Device, DeviceStatus
from tesai.kit.time import utcnow
from tesai.scheduling import placement as pl
from tesai.scheduling.index import PoolIndex

VERIFIED_GFLOPS_REFERENCE = 1000.0
"""Proof-of-compute GFLOP/s that maps to a verified score of 0.5 (x / (x + ref))."""


def tier_number(tier: str | None) -> int | None:
    """``"t2"`` → 2; None when unmeasured."""
    if not tier or not tier.startswith("t") or not tier[1:].isdigit():
        return None
    return int(tier[1:])


def verified_score(gflops: float | None) -> float:
    if not gflops or gflops <= 0:
        return 0.0
    return gflops / (gflops + VERIFIED_GFLOPS_REFERENCE)


def to_placement_request(
    req: ClusterRequest, *, gpus: int | None = None, excluded: frozenset[str] = frozenset()
) -> pl.PlacementRequest:
    return pl.PlacementRequest(
        gpu_model=req.gpu_model,
        gpu_count=req.gpus if gpus is None else gpus,
        node_count=req.nodes if req.gpu_model is None else None,
        gpus_per_node=req.gpus_per_node,
        max_price_per_gpu_hour_micro=req.max_price_per_gpu_hour_micro,
        regions=frozenset(req.regions),
        countries=frozenset(c.upper() for c in req.countries),
        min_reliability=req.min_reliability,
        min_connectivity_tier=req.min_connectivity_tier,
        min_verified_score=req.min_verified_score,
        min_vram_mb=req.min_vram_mb,
        excluded_device_ids=excluded,
        allow_cross_region=req.allow_cross_region,
    )


async def load_pool(
    session: AsyncSession, now: datetime, *, quote_id: uuid.UUID | None = None
) -> list[pl.Device]:
    """Listed devices (online or rented), each marked free when nobody else holds it.

    A device is not free when a live cluster node books it, or an unexpired reservation of
    another quote holds it. Rented devices are included so a shortfall can count them.
    """
    booked = exists().where(
        and_(ClusterNode.device_id == Device.id, ClusterNode.released_at.is_(None))
    )
    held = [DeviceReservation.device_id == Device.id, DeviceReservation.expires_at > now]
    if quote_id is not None:
        held.append(DeviceReservation.quote_id != quote_id)
    reserved = exists().where(and_(*held))
    rows = await session.execute(
        select(Device, booked, reserved).where(
            Device.status.in_([DeviceStatus.online, DeviceStatus.busy])
        )
    )
    pool = []
    for device, is_booked, is_reserved in rows.tuples():
        free = device.status is DeviceStatus.online and not is_booked and not is_reserved
        pool.append(
            pl.Device(
                id=str(device.id),
                gpu_model=device.gpu_model if device.gpu_count else None,
                gpu_count=device.gpu_count,
                vram_mb=device.vram_bytes_per_gpu // (1024 * 1024),
                region=device.region or "unknown",
                country=(device.country or "").upper(),
                price_per_gpu_hour_micro=device.price_per_gpu_hour_micro,
                reliability=device.reliability,
                verified_score=verified_score(device.verified_score),
                connectivity_tier=tier_number(device.connectivity_tier),
                free=free,
            )
        )
    return pool


# --- the per-process index --------------------------------------------------------------------

_LISTED = ("online", "busy")
# The row of a device as placement reads it: ``bookable`` = online and no live node books it;
# ``held_until`` = the end of another quote's unexpired reservation, if any.
_DEVICE_ROW = """
    d.id, d.status, d.gpu_model, d.gpu_count, d.vram_bytes_per_gpu, d.region, d.country,
    d.price_per_gpu_hour_micro, d.reliability, d.verified_score, d.connectivity_tier,
    d.status = 'online' AND NOT EXISTS (
        SELECT 1 FROM cluster_nodes n WHERE n.device_id = d.id AND n.released_at IS NULL
    ) AS bookable,
    (SELECT max(r.expires_at) FROM device_reservations r
     WHERE r.device_id = d.id AND r.expires_at > :now AND r.quote_id IS DISTINCT FROM :quote_id
    ) AS held_until"""
# One statement, so the watermark and the rows come from the same snapshot: every transaction
# below its xmax and not in its in-progress list (xip) has ended, so its changes are in these
# rows (or were in an earlier read); the next read takes xids >= xmax plus that xip list. The
# snapshot never lists the reading transaction itself, which has not ended either: its id
# (when it has one) joins the list, or the devices it stamps later would never be read.
_SNAPSHOT = (
    "WITH s AS (SELECT txid_snapshot_xmax(txid_current_snapshot()) AS xmax,"
    " array_remove(ARRAY(SELECT txid_snapshot_xip(txid_current_snapshot()))"
    " || txid_current_if_assigned(), NULL) AS xip)"
    " SELECT s.xmax, s.xip,"
)
_FULL_SQL = text(
    _SNAPSHOT + _DEVICE_ROW + " FROM s LEFT JOIN devices d ON d.status IN ('online', 'busy')"
)
_DELTA_SQL = text(
    _SNAPSHOT
    + _DEVICE_ROW
    + " FROM s LEFT JOIN devices d"
    + " ON d.change_xact >= :watermark OR d.change_xact = ANY(CAST(:in_progress AS bigint[]))"
    + " OR d.id = ANY(CAST(:watched AS uuid[]))"
)
_CHECK_SQL = "SELECT" + _DEVICE_ROW + " FROM devices d WHERE d.id = ANY(:ids) FOR UPDATE OF d"
_CHECK_SKIP_LOCKED = text(_CHECK_SQL + " SKIP LOCKED")
_CHECK_WAIT = text(_CHECK_SQL)


def _freed_unstamped(row: Mapping[Any, Any]) -> bool:
    """Whether the device can become bookable without its row changing: ``online`` while a
    live node books it (only the node's release, in ``cluster_nodes``, frees it)."""
    return row["status"] == "online" and not row["bookable"]


def _read_rows(
    rows: Iterable[Mapping[Any, Any]], now: datetime
) -> tuple[list[pl.Device], list[str], dict[str, float]]:
    """Listed devices (``free`` = bookable), ids no longer listed, and the seconds left on
    another quote's hold of bookable devices."""
    devices: list[pl.Device] = []
    gone: list[str] = []
    reserved: dict[str, float] = {}
    for r in rows:
        if r["status"] not in _LISTED:
            gone.append(str(r["id"]))
            continue
        devices.append(device_from_row(r, bool(r["bookable"])))
        if r["held_until"] is not None and r["bookable"]:
            reserved[str(r["id"])] = max((r["held_until"] - now).total_seconds(), 0.0)
    return devices, gone, reserved


def device_from_row(row: Mapping[Any, Any], free: bool) -> pl.Device:
    return pl.Device(
        id=str(row["id"]),
        gpu_model=row["gpu_model"] if row["gpu_count"] else None,
        gpu_count=row["gpu_count"],
        vram_mb=row["vram_bytes_per_gpu"] // (1024 * 1024),
        region=row["region"] or "unknown",
        country=(row["country"] or "").upper(),
        price_per_gpu_hour_micro=row["price_per_gpu_hour_micro"],
        reliability=row["reliability"],
        verified_score=verified_score(row["verified_score"]),
        connectivity_tier=tier_number(row["connectivity_tier"]),
        free=free,
    )


@dataclass(frozen=True, slots=True)
class CheckedDevices:
    """What locking the chosen devices found; ``ok`` when every one can be booked now."""

    ok: bool
    rows: dict[str, dict[str, Any]]
    """Locked rows by device id (with ``bookable`` and ``held_until``)."""
    unavailable: frozenset[str]
    """Chosen devices that cannot be booked: locked by another transaction, rented, offline,
    held by another quote, or changed since the index read them."""
    reserved: frozenset[str] = frozenset()
    """Of those, the ones held by another quote (the index keeps them held until it ends)."""


@dataclass
class PoolStats:
    full_loads: int = 0
    deltas: int = 0
    delta_rows: int = 0
    conflicts: int = 0


@dataclass
class PoolCache:
    """A process's ``PoolIndex``, kept current from the database's change stamps.

    ``current`` reads the changes since the watermark (at most every ``refresh_interval_s``)
    and a full snapshot every ``resync_interval_s``. Devices this process has chosen but not yet
    seen committed are *held* locally (taken in the index until the change feed confirms them or
    ``hold_ttl_s`` passes), so concurrent requests of the same process do not pick them twice.
    A device is free in the index exactly when the database last said it was bookable and no
    hold is on it: a hold never outlives a rented answer from the database.
    """

    refresh_interval_s: float = 0.02
    resync_interval_s: float = 600.0
    hold_ttl_s: float = 30.0
    index: PoolIndex | None = None
    watermark: int = 0
    """Transactions from this id on are read again (the last snapshot's xmax)."""
    in_progress: tuple[int, ...] = ()
    """Transactions the last snapshot saw running: their rows are read again too."""
    stats: PoolStats = field(default_factory=PoolStats)
    watched: set[str] = field(default_factory=set)
    """Devices read again on every refresh: online but not bookable (see ``_freed_unstamped``)."""
    _holds: dict[str, float] = field(default_factory=dict)
    _refreshed_at: float = 0.0
    _loaded_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def current(self, session: AsyncSession, *, full: bool = False) -> PoolIndex:
        """The index, first brought up to date (one query; the whole pool when due)."""
        now = time.monotonic()
        if (
            self.index is not None
            and not full
            and now - self._refreshed_at < self.refresh_interval_s
            and now - self._loaded_at < self.resync_interval_s
        ):
            return self.index
        async with self._lock:
            now = time.monotonic()
            if self.index is None or full or now - self._loaded_at >= self.resync_interval_s:
                await self._load(session)
            elif now - self._refreshed_at >= self.refresh_interval_s:
                await self._delta(session)
            self._expire_holds(time.monotonic())
        assert self.index is not None
        return self.index

    async def _load(self, session: AsyncSession) -> None:
        now = utcnow()
        result = await session.execute(_FULL_SQL, {"now": now, "quote_id": None})
        rows = result.mappings().all()
        listed = [r for r in rows if r["id"] is not None]
        devices, _, reserved = _read_rows(listed, now)
        self.index = PoolIndex.build(devices)
        self.watched = set()
        self._watch(listed)
        held, self._holds = self._holds, {}
        for device_id, until in held.items():
            self.hold([device_id], until - time.monotonic())
        for device_id, ttl in reserved.items():
            self.hold([device_id], ttl)
        self._advance(rows[0])
        self._loaded_at = self._refreshed_at = time.monotonic()
        self.stats.full_loads += 1

    async def _delta(self, session: AsyncSession) -> None:
        now = utcnow()
        params = {
            "now": now,
            "quote_id": None,
            "watermark": self.watermark,
            "in_progress": list(self.in_progress),
            "watched": [uuid.UUID(i) for i in self.watched],
        }
        rows = (await session.execute(_DELTA_SQL, params)).mappings().all()
        changed = [r for r in rows if r["id"] is not None]
        devices, gone, reserved = _read_rows(changed, now)
        self._watch(changed)
        self.apply(devices, gone)
        for device_id, ttl in reserved.items():
            self.hold([device_id], ttl)
        self._advance(rows[0])
        self._refreshed_at = time.monotonic()
        self.stats.deltas += 1
        self.stats.delta_rows += len(changed)

    def _watch(self, rows: Iterable[Mapping[Any, Any]]) -> None:
        for r in rows:
            if _freed_unstamped(r):
                self.watched.add(str(r["id"]))
            else:
                self.watched.discard(str(r["id"]))

    def _advance(self, row: Mapping[Any, Any]) -> None:
        self.watermark = int(row["xmax"])
        self.in_progress = tuple(int(x) for x in row["xip"])

    def apply(self, devices: Iterable[pl.Device], removed: Iterable[str] = ()) -> None:
        """Apply the database's word on some devices; a held device stays taken while the
        database still shows it free (its booking is not committed yet)."""
        assert self.index is not None
        changed = []
        for d in devices:
            if d.id in self._holds:
                if not d.free:
                    del self._holds[d.id]
                d = replace(d, free=False)
            changed.append(d)
        gone = list(removed)
        for device_id in gone:
            self._holds.pop(device_id, None)
        self.index.apply(changed, gone)

    def hold(self, device_ids: Iterable[str], ttl_s: float | None = None) -> None:
        """Take devices in the index until the change feed shows them booked (or ``ttl_s``).

        A device the database already shows rented (taken in the index and not held) gets no
        hold: the change feed frees it when the database does, and a hold running out must
        not free it before."""
        assert self.index is not None
        until = time.monotonic() + (self.hold_ttl_s if ttl_s is None else ttl_s)
        for device_id in device_ids:
            if device_id not in self.index:
                continue
            if self.index.is_free(device_id):
                self.index.take([device_id])
            elif device_id not in self._holds:
                continue
            self._holds[device_id] = max(until, self._holds.get(device_id, 0.0))

    def unhold(self, device_ids: Iterable[str]) -> None:
        """The booking did not happen: give held devices back to the index."""
        assert self.index is not None
        for device_id in device_ids:
            if self._holds.pop(device_id, None) is not None and device_id in self.index:
                self.index.release([device_id])

    def held(self) -> frozenset[str]:
        return frozenset(self._holds)

    def _expire_holds(self, now: float) -> None:
        expired = [i for i, until in self._holds.items() if until <= now]
        if expired:
            self.unhold(expired)

    async def lock(
        self,
        session: AsyncSession,
        device_ids: Iterable[str],
        *,
        quote_id: uuid.UUID | None = None,
        skip_locked: bool = True,
        compare: bool = True,
        release: bool = True,
    ) -> CheckedDevices:
        """Lock the chosen devices' rows (``FOR UPDATE``; with ``skip_locked`` a row another
        transaction holds counts as unavailable instead of being waited for) and check each is
        still bookable with the attributes the index placed it by. The index learns what the
        rows say; a device held by another quote stays out of it until that hold ends. Without
        ``compare`` (a quote's devices, priced when quoted) only availability is checked.

        When something is unavailable, this attempt's local holds on the chosen devices are
        given back (the caller retries without the ones another transaction has locked);
        ``release=False`` leaves that to the caller (a batch gives back only the holds of the
        placements that failed).
        """
        ids = list(device_ids)
        stmt = _CHECK_SKIP_LOCKED if skip_locked else _CHECK_WAIT
        now = utcnow()
        params = {"ids": [uuid.UUID(i) for i in ids], "now": now, "quote_id": quote_id}
        result = await session.execute(stmt, params)
        rows = {str(r["id"]): dict(r) for r in result.mappings().all()}
        found = [rows[i] for i in ids if i in rows]
        fresh, gone, reserved = _read_rows(found, now)
        self._watch(found)
        unavailable = {i for i in ids if i not in rows} | set(gone) | set(reserved)
        for device in fresh:
            believed = self._known(device.id) if compare else device
            if (
                not device.free
                or believed is None
                or replace(believed, free=True) != replace(device, free=True)
            ):
                unavailable.add(device.id)
        if self.index is not None:
            self.apply(fresh, gone)
            if unavailable and release:
                self.unhold(i for i in ids if i not in reserved)
            for device_id, ttl in reserved.items():
                self.hold([device_id], ttl)
        if unavailable:
            self.stats.conflicts += 1
        return CheckedDevices(not unavailable, rows, frozenset(unavailable), frozenset(reserved))

    def _known(self, device_id: str) -> pl.Device | None:
        if self.index is None or device_id not in self.index:
            return None
        return self.index.get(device_id)


POOL_CACHE_KEY = "clusters.pool_cache"


def pool_cache(state: dict[str, Any]) -> PoolCache:
    """The process's ``PoolCache`` (kept in ``Runtime.state``)."""
    cache = state.get(POOL_CACHE_KEY)
    if not isinstance(cache, PoolCache):
        cache = state[POOL_CACHE_KEY] = PoolCache()
    return cache

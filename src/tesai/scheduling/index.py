"""A placement index over a pool snapshot: the fast path of ``place_reference``.

Devices are bucketed by (GPU model, GPUs per device, region); each bucket holds its devices
sorted once by (score desc, id) and a sorted list of the positions still free. Placing a shape
in a region scans that bucket's free positions from the best and stops after ``nodes`` devices
pass the request's thresholds, so a typical request touches a handful of devices per region
instead of the whole pool. ``take``/``release`` move positions in and out of the free list in
O(bucket) time (a bisect and a list insert), so the order never has to be rebuilt.

The index is a cache of the database's truth (which device is rented): a process builds it from
a snapshot, places, commits the booking with row locks, then ``take``s the ids. Semantics are
identical to ``place_reference`` (property-tested), including the Shortfall counts.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from tesai.scheduling.placement import (
    DEFAULT_POLICY,
    Device,
    Placement,
    PlacementRequest,
    ScoreBreakdown,
    ScoringPolicy,
    Shape,
    Shortfall,
    build_shortfall,
    explain_region,
    make_placement,
    score_device,
    shape_reason,
)


class DeviceNotFree(ValueError):
    """``take`` was given a device that is already taken (nothing was taken)."""


class UnknownDevice(KeyError):
    """The id is not in the index."""


@dataclass(slots=True)
class _Bucket:
    """Devices of one (model, gpu_count, region), best first, and which of them are free."""

    devices: list[Device]
    scores: list[ScoreBreakdown]
    totals: list[float]
    free: list[int]
    free_flags: bytearray


_EMPTY: Final = _Bucket([], [], [], [], bytearray())


class PoolIndex:
    """Placement over a pool snapshot, updated incrementally as devices are taken and freed."""

    def __init__(self, policy: ScoringPolicy = DEFAULT_POLICY) -> None:
        self.policy = policy
        # (model, gpu_count) → region → bucket; regions kept sorted for deterministic scans.
        self._buckets: dict[tuple[str | None, int], dict[str, _Bucket]] = {}
        self._by_model: dict[str | None, list[_Bucket]] = {}
        self._where: dict[str, tuple[_Bucket, int]] = {}

    @classmethod
    def build(cls, devices: Iterable[Device], policy: ScoringPolicy = DEFAULT_POLICY) -> PoolIndex:
        """Index a snapshot; a device's ``free`` flag gives its initial state.

        Raises ValueError on a duplicate device id.
        """
        index = cls(policy)
        groups: dict[tuple[str | None, int, str], list[Device]] = {}
        for d in devices:
            if d.id in index._where:
                raise ValueError(f"duplicate device id {d.id}")
            index._where[d.id] = (_EMPTY, 0)
            groups.setdefault((d.gpu_model, d.gpu_count, d.region), []).append(d)
        for key in sorted(groups, key=lambda k: (str(k[0]), k[1], k[2])):
            index._set_bucket(key, groups[key])
        return index

    def _set_bucket(self, key: tuple[str | None, int, str], devices: list[Device]) -> None:
        """(Re)build one bucket from its devices (``free`` flags included)."""
        model, count, region = key
        regions = self._buckets.setdefault((model, count), {})
        old = regions.pop(region, None)
        by_model = self._by_model.setdefault(model, [])
        if old is not None:
            by_model.remove(old)
        if not devices:
            if not regions:
                del self._buckets[(model, count)]
            return
        scored = sorted(
            ((score_device(d, self.policy), d) for d in devices),
            key=lambda p: (-p[0].total, p[1].id),
        )
        bucket = _Bucket(
            devices=[d for _, d in scored],
            scores=[s for s, _ in scored],
            totals=[s.total for s, _ in scored],
            free=[i for i, (_, d) in enumerate(scored) if d.free],
            free_flags=bytearray(1 if d.free else 0 for _, d in scored),
        )
        # Keep regions in name order: scans and ties must not depend on insertion history.
        regions[region] = bucket
        self._buckets[(model, count)] = dict(sorted(regions.items()))
        by_model.append(bucket)
        for pos, d in enumerate(bucket.devices):
            self._where[d.id] = (bucket, pos)

    def _bucket_devices(self, bucket: _Bucket) -> list[Device]:
        return [
            replace(d, free=bool(bucket.free_flags[pos])) for pos, d in enumerate(bucket.devices)
        ]

    def upsert(self, device: Device) -> None:
        """Add a device (it came online) or replace it (new price, score…); ``free`` as given."""
        if device.id in self._where:
            self.discard(device.id)
        key = (device.gpu_model, device.gpu_count, device.region)
        regions = self._buckets.get((device.gpu_model, device.gpu_count), {})
        current = regions.get(device.region)
        others = self._bucket_devices(current) if current is not None else []
        self._set_bucket(key, [*others, device])

    def discard(self, device_id: str) -> None:
        """Remove a device (it went offline). Raises UnknownDevice."""
        bucket, _ = self._locate(device_id)
        first = bucket.devices[0]
        del self._where[device_id]
        rest = [d for d in self._bucket_devices(bucket) if d.id != device_id]
        self._set_bucket((first.gpu_model, first.gpu_count, first.region), rest)

    def apply(self, devices: Iterable[Device], removed: Iterable[str] = ()) -> int:
        """Bring the index up to date with changed devices; returns how many buckets were rebuilt.

        A device whose placement attributes are unchanged only has its ``free`` state set
        (O(log bucket)); a new device, one whose attributes changed, and the ``removed`` ids
        (unknown ones are ignored) rebuild their buckets, each once per call. When an id
        appears twice in ``devices`` the last one wins.
        """
        latest = {d.id: d for d in devices}
        rebuild: dict[tuple[str | None, int, str], dict[str, Device]] = {}

        def members(key: tuple[str | None, int, str]) -> dict[str, Device]:
            if key not in rebuild:
                current = self._buckets.get((key[0], key[1]), {}).get(key[2])
                rebuild[key] = {d.id: d for d in self._bucket_devices(current)} if current else {}
            return rebuild[key]

        def key_of(bucket: _Bucket) -> tuple[str | None, int, str]:
            first = bucket.devices[0]
            return (first.gpu_model, first.gpu_count, first.region)

        for device_id in removed:
            located = self._where.pop(device_id, None)
            if located is not None:
                members(key_of(located[0])).pop(device_id, None)
        for d in latest.values():
            located = self._where.get(d.id)
            if located is not None:
                bucket, pos = located
                old_key = key_of(bucket)
                if old_key in rebuild:
                    members(old_key).pop(d.id, None)
                elif replace(bucket.devices[pos], free=d.free) == d:
                    self._set_free(bucket, pos, d.free)
                    continue
                else:
                    members(old_key).pop(d.id, None)
            members((d.gpu_model, d.gpu_count, d.region))[d.id] = d
            self._where[d.id] = (_EMPTY, 0)  # placed for real when its bucket is rebuilt
        for key, group in rebuild.items():
            self._set_bucket(key, list(group.values()))
        return len(rebuild)

    @staticmethod
    def _set_free(bucket: _Bucket, pos: int, free: bool) -> None:
        if free and not bucket.free_flags[pos]:
            bucket.free_flags[pos] = 1
            bisect.insort(bucket.free, pos)
        elif not free and bucket.free_flags[pos]:
            bucket.free_flags[pos] = 0
            del bucket.free[bisect.bisect_left(bucket.free, pos)]

    def get(self, device_id: str) -> Device:
        """The indexed device with its current ``free`` state. Raises UnknownDevice."""
        bucket, pos = self._locate(device_id)
        return replace(bucket.devices[pos], free=bool(bucket.free_flags[pos]))

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def is_free(self, device_id: str) -> bool:
        """Whether the device is free in this index. Raises UnknownDevice."""
        bucket, pos = self._locate(device_id)
        return bool(bucket.free_flags[pos])

    def devices(self) -> Iterator[Device]:
        """Every indexed device with its current ``free`` state."""
        for buckets in self._by_model.values():
            for b in buckets:
                for pos, d in enumerate(b.devices):
                    yield replace(d, free=bool(b.free_flags[pos]))

    def take(self, device_ids: Iterable[str]) -> None:
        """Mark devices as rented, all or none.

        Raises UnknownDevice or DeviceNotFree (and then takes nothing).
        """
        ids = list(device_ids)
        located = [self._locate(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise DeviceNotFree("the same device twice")
        for device_id, (bucket, pos) in zip(ids, located, strict=True):
            if not bucket.free_flags[pos]:
                raise DeviceNotFree(device_id)
        for bucket, pos in located:
            bucket.free_flags[pos] = 0
            del bucket.free[bisect.bisect_left(bucket.free, pos)]

    def release(self, device_ids: Iterable[str]) -> None:
        """Mark devices as free again; already-free ones are left as they are.

        Raises UnknownDevice (and then releases nothing).
        """
        located = [self._locate(i) for i in device_ids]
        for bucket, pos in located:
            if not bucket.free_flags[pos]:
                bucket.free_flags[pos] = 1
                bisect.insort(bucket.free, pos)

    def _locate(self, device_id: str) -> tuple[_Bucket, int]:
        try:
            return self._where[device_id]
        except KeyError:
            raise UnknownDevice(device_id) from None

    def _best(self, bucket: _Bucket, request: PlacementRequest, limit: int) -> list[int]:
        """Positions of the best ``limit`` free devices passing the request's thresholds."""
        picked: list[int] = []
        max_price = request.max_price_per_gpu_hour_micro
        min_rel = request.min_reliability
        min_ver = request.min_verified_score
        min_vram = request.min_vram_mb
        tier_limit = request.min_connectivity_tier
        countries = request.countries
        excluded = request.excluded_device_ids
        devices = bucket.devices
        for pos in bucket.free:
            d = devices[pos]
            if (
                (countries and d.country not in countries)
                or (excluded and d.id in excluded)
                or (max_price is not None and d.price_per_gpu_hour_micro > max_price)
                or d.reliability < min_rel
                or (
                    tier_limit is not None
                    and (d.connectivity_tier is None or d.connectivity_tier > tier_limit)
                )
                or d.verified_score < min_ver
                or d.vram_mb < min_vram
            ):
                continue
            picked.append(pos)
            if len(picked) == limit:
                break
        return picked

    def _iter_eligible(
        self, bucket: _Bucket, request: PlacementRequest
    ) -> Iterator[tuple[float, str, Device, ScoreBreakdown]]:
        for pos in self._best(bucket, request, len(bucket.devices) + 1):
            d = bucket.devices[pos]
            yield (-bucket.totals[pos], d.id, d, bucket.scores[pos])

    def place(self, request: PlacementRequest) -> Placement | Shortfall:
        """Place a request (same result as ``place_reference`` on ``self.devices()``).

        Does not take the devices: commit the booking, then call ``take``.
        Raises InvalidPlacementRequest.
        """
        shapes = request.shapes()
        allowed = request.regions
        for shape in shapes:
            regions = self._buckets.get((request.gpu_model, shape.gpus_per_node))
            if not regions:
                continue
            ranked: list[tuple[float, str]] = []
            picks: dict[str, list[int]] = {}
            for region, bucket in regions.items():
                if (allowed and region not in allowed) or len(bucket.free) < shape.nodes:
                    continue
                best = self._best(bucket, request, shape.nodes)
                if len(best) == shape.nodes:
                    picks[region] = best
                    ranked.append((-math.fsum(bucket.totals[p] for p in best), region))
            if ranked:
                ranked.sort()
                pos_ranked = [(-neg, region) for neg, region in ranked]
                region = pos_ranked[0][1]
                bucket = regions[region]
                chosen = [(bucket.devices[p], bucket.scores[p]) for p in picks[region]]
                reasons = [shape_reason(shape, shapes), explain_region(region, pos_ranked, shape)]
                return make_placement(shape, chosen, region, reasons)
        if request.allow_cross_region:
            for shape in shapes:
                placement = self._place_across(request, shapes, shape)
                if placement is not None:
                    return placement
        return self._shortfall(request)

    def _place_across(
        self, request: PlacementRequest, shapes: tuple[Shape, ...], shape: Shape
    ) -> Placement | None:
        regions = self._buckets.get((request.gpu_model, shape.gpus_per_node))
        if not regions:
            return None
        allowed = request.regions
        streams = [
            self._iter_eligible(bucket, request)
            for region, bucket in regions.items()
            if not allowed or region in allowed
        ]
        chosen: list[tuple[Device, ScoreBreakdown]] = []
        for _, _, d, s in heapq.merge(*streams):
            chosen.append((d, s))
            if len(chosen) == shape.nodes:
                break
        if len(chosen) < shape.nodes:
            return None
        spread = sorted({d.region for d, _ in chosen})
        reasons = [
            shape_reason(shape, shapes),
            "no single region can host any shape; spread over " + ", ".join(spread),
        ]
        return make_placement(shape, chosen, None, reasons)

    def _shortfall(self, request: PlacementRequest) -> Shortfall:
        allowed = request.regions
        countries = request.countries
        counts = {s.gpus_per_node for s in request.shapes()}
        wrong_count = 0
        scan: list[_Bucket] = []
        for bucket in self._by_model.get(request.gpu_model, ()):
            first = bucket.devices[0]
            if allowed and first.region not in allowed:
                continue
            if first.gpu_count in counts:
                scan.append(bucket)
            elif countries:
                # A whole bucket of the wrong GPU count: only the country filter (an identity
                # filter, applied first) is left to check per device.
                wrong_count += sum(1 for d in bucket.devices if d.country in countries)
            else:
                wrong_count += len(bucket.devices)

        def candidates() -> Iterator[tuple[Device, bool]]:
            for bucket in scan:
                for pos, d in enumerate(bucket.devices):
                    yield d, bool(bucket.free_flags[pos])

        return build_shortfall(request, candidates(), wrong_gpu_count=wrong_count)

"""The fast PoolIndex gives exactly the reference result, on random pools and bookings."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesai.scheduling import Device, Placement, PlacementRequest, PoolIndex, place_reference

MODELS = ["A100", "H100", None]
REGIONS = ["eu", "us", "ap"]
COUNTRIES = ["DE", "FR", "US"]


@st.composite
def devices(draw: st.DrawFn) -> list[Device]:
    n = draw(st.integers(0, 40))
    pool = []
    for i in range(n):
        model = draw(st.sampled_from(MODELS))
        pool.append(
            Device(
                id=f"d{i:03d}",
                gpu_model=model,
                gpu_count=0 if model is None else draw(st.sampled_from([1, 2, 4, 8, 3])),
                vram_mb=draw(st.sampled_from([24_000, 80_000])),
                region=draw(st.sampled_from(REGIONS)),
                country=draw(st.sampled_from(COUNTRIES)),
                # Few distinct values, so that equal scores (ties) are common.
                price_per_gpu_hour_micro=draw(st.sampled_from([500_000, 1_000_000, 2_000_000])),
                reliability=draw(st.sampled_from([0.8, 0.95, 0.99])),
                verified_score=draw(st.sampled_from([0.5, 0.9])),
                connectivity_tier=draw(st.sampled_from([1, 3, 5, None])),
                free=draw(st.booleans()) or draw(st.booleans()),
            )
        )
    return pool


@st.composite
def requests(draw: st.DrawFn) -> PlacementRequest:
    model = draw(st.sampled_from(MODELS))
    common = {
        "max_price_per_gpu_hour_micro": draw(st.sampled_from([None, 1_000_000])),
        "regions": frozenset(draw(st.sets(st.sampled_from(REGIONS), max_size=2))),
        "countries": frozenset(draw(st.sets(st.sampled_from(COUNTRIES), max_size=2))),
        "min_reliability": draw(st.sampled_from([0.0, 0.9])),
        "min_connectivity_tier": draw(st.sampled_from([None, 3])),
        "min_verified_score": draw(st.sampled_from([0.0, 0.8])),
        "min_vram_mb": draw(st.sampled_from([0, 40_000])),
        "excluded_device_ids": frozenset(
            f"d{i:03d}" for i in draw(st.sets(st.integers(0, 40), max_size=3))
        ),
        "allow_cross_region": draw(st.booleans()),
    }
    if model is None:
        return PlacementRequest(gpu_model=None, node_count=draw(st.integers(1, 4)), **common)
    total = draw(st.integers(1, 8))
    per_node = draw(st.sampled_from([None, *[d for d in (1, 2, 4, 8) if total % d == 0]]))
    return PlacementRequest(gpu_model=model, gpu_count=total, gpus_per_node=per_node, **common)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(devices(), st.lists(requests(), min_size=1, max_size=6), st.data())
def test_index_agrees_with_reference(
    pool: list[Device], reqs: list[PlacementRequest], data: st.DataObject
) -> None:
    index = PoolIndex.build(pool)
    live: list[tuple[str, ...]] = []
    for request in reqs:
        snapshot = list(index.devices())
        expected = place_reference(snapshot, request)
        assert index.place(request) == expected
        if isinstance(expected, Placement):
            # Book it, sometimes free an earlier booking: later requests see the change.
            index.take(expected.device_ids)
            live.append(expected.device_ids)
            assert all(not index.is_free(i) for i in expected.device_ids)
        if live and data.draw(st.booleans()):
            index.release(live.pop(data.draw(st.integers(0, len(live) - 1))))
        # Devices go offline, come back, change price: the index follows.
        present = sorted(d.id for d in index.devices())
        op = data.draw(st.sampled_from(["none", "discard", "upsert"]))
        if op == "discard" and present:
            gone = data.draw(st.sampled_from(present))
            index.discard(gone)
            live = [ids for ids in live if gone not in ids]
        elif op == "upsert" and pool:
            changed = replace(
                data.draw(st.sampled_from(pool)),
                price_per_gpu_hour_micro=data.draw(st.sampled_from([500_000, 3_000_000])),
                free=True,
            )
            index.upsert(changed)
            live = [ids for ids in live if changed.id not in ids]
        assert len(index) == len(list(index.devices()))

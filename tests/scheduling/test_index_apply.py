"""``PoolIndex.apply`` (a batch of changes read from the database) equals a fresh build."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesai.scheduling import Device, PlacementRequest, PoolIndex, place_reference
from tests.scheduling.test_index_agrees import REGIONS, devices, requests


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(devices(), st.lists(requests(), min_size=1, max_size=4), st.data())
def test_apply_equals_a_fresh_build(
    pool: list[Device], reqs: list[PlacementRequest], data: st.DataObject
) -> None:
    index = PoolIndex.build(pool)
    truth = {d.id: d for d in pool}
    changed: list[Device] = []
    removed: list[str] = []
    for d in pool:
        op = data.draw(st.sampled_from(["same", "same", "flip", "price", "move", "remove"]))
        if op == "flip":
            changed.append(replace(d, free=not d.free))
        elif op == "price":
            changed.append(replace(d, price_per_gpu_hour_micro=d.price_per_gpu_hour_micro * 3))
        elif op == "move":
            region = data.draw(st.sampled_from(REGIONS))
            changed.append(replace(d, region=region, free=data.draw(st.booleans())))
        elif op == "remove":
            removed.append(d.id)
    added = (
        [replace(pool[0], id=f"new{i}", free=True) for i in range(data.draw(st.integers(0, 3)))]
        if pool
        else []
    )
    # An id listed twice: the last word wins.
    if changed:
        changed.append(replace(changed[0], free=not changed[0].free))
    for d in [*changed, *added]:
        truth[d.id] = d
    for device_id in removed:
        truth.pop(device_id, None)

    index.apply([*changed, *added], removed)

    expected = PoolIndex.build(truth.values())
    assert sorted(index.devices(), key=lambda d: d.id) == sorted(truth.values(), key=lambda d: d.id)
    for request in reqs:
        assert index.place(request) == expected.place(request)
        assert index.place(request) == place_reference(list(truth.values()), request)


def test_apply_only_flips_state_when_attributes_are_unchanged() -> None:
    a = Device("a", "A100", 1, 80_000, "eu", "DE", 1_000_000, 0.99, 0.9, 2, free=True)
    b = replace(a, id="b", price_per_gpu_hour_micro=2_000_000)
    index = PoolIndex.build([a, b])
    assert index.apply([replace(a, free=False)]) == 0  # no bucket rebuilt
    assert not index.is_free("a")
    assert index.apply([replace(b, price_per_gpu_hour_micro=500_000)]) == 1
    assert index.get("b").price_per_gpu_hour_micro == 500_000
    assert index.apply([], ["a", "unknown"]) == 1
    assert "a" not in index
    assert len(index) == 1

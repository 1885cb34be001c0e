"""Gang placement: shapes, co-location, scoring, shortfall reasons and pricing."""

from __future__ import annotations

import pytest

from tesai.scheduling import (
    Device,
    DeviceNotFree,
    InvalidPlacementRequest,
    Placement,
    PlacementRequest,
    PoolIndex,
    Shortfall,
    UnknownDevice,
    place_reference,
    price_placement,
)
from tesai.scheduling.placement import format_usd, score_device
from tesai.scheduling.pricing import ceil_div, fee_micro

USD = 1_000_000


def dev(
    id: str,
    *,
    model: str | None = "A100",
    gpus: int = 1,
    region: str = "eu",
    country: str = "DE",
    price: int = USD,
    reliability: float = 0.99,
    verified: float = 0.9,
    tier: int | None = 2,
    vram: int = 80_000,
    free: bool = True,
) -> Device:
    return Device(id, model, gpus, vram, region, country, price, reliability, verified, tier, free)


def both(devices: list[Device], request: PlacementRequest) -> Placement | Shortfall:
    """Place with the reference and the index; they must agree."""
    ref = place_reference(devices, request)
    fast = PoolIndex.build(devices).place(request)
    assert fast == ref
    return ref


def test_one_device_with_all_gpus_beats_several_smaller_ones() -> None:
    pool = [dev("big", gpus=8, price=3 * USD)] + [dev(f"s{i}", gpus=2) for i in range(4)]
    result = both(pool, PlacementRequest(gpu_model="A100", gpu_count=8))
    assert isinstance(result, Placement)
    assert result.device_ids == ("big",)
    assert result.shape.nodes == 1
    assert result.reasons[0].startswith("shape 1×8")


def test_falls_back_to_more_nodes_and_says_which_shapes_were_not_met() -> None:
    pool = [dev(f"s{i}", gpus=2) for i in range(4)] + [dev("odd", gpus=3)]
    result = both(pool, PlacementRequest(gpu_model="A100", gpu_count=8))
    assert isinstance(result, Placement)
    assert sorted(result.device_ids) == ["s0", "s1", "s2", "s3"]
    assert "not met: 1×8, 2×4" in result.reasons[0]


def test_prefers_one_region_and_explains_the_choice() -> None:
    pool = [
        dev("eu1", region="eu", price=2 * USD),
        dev("eu2", region="eu", price=2 * USD),
        dev("us1", region="us", price=USD // 2),
        dev("us2", region="us", price=USD // 2),
        dev("ap1", region="ap", price=USD // 10),  # cheapest, but alone in its region
    ]
    result = both(pool, PlacementRequest(gpu_model="A100", gpu_count=2, gpus_per_node=1))
    assert isinstance(result, Placement)
    assert result.region == "us"
    assert set(result.device_ids) == {"us1", "us2"}
    assert "region us" in result.reasons[1]
    assert "eu" in result.reasons[1]
    # Every device carries its score components.
    d = result.devices[0]
    assert d.score.price > 0.6
    assert d.score.reliability == 0.99
    assert 0 < d.score.total <= 1


def test_spreads_across_regions_only_when_allowed() -> None:
    pool = [dev("eu1", region="eu"), dev("us1", region="us")]
    request = PlacementRequest(gpu_model="A100", gpu_count=2, gpus_per_node=1)
    result = both(pool, request)
    assert isinstance(result, Placement)
    assert result.region is None
    assert "spread over eu, us" in result.reasons[1]

    strict = PlacementRequest(
        gpu_model="A100", gpu_count=2, gpus_per_node=1, allow_cross_region=False
    )
    short = both(pool, strict)
    assert isinstance(short, Shortfall)
    assert "fits in one region" in short.message


def test_shortfall_counts_each_reason_in_numbers() -> None:
    pool = (
        [dev(f"ok{i}", gpus=1) for i in range(1)]
        + [dev(f"rented{i}", free=False) for i in range(3)]
        + [dev("flaky", reliability=0.5)]
        + [dev("us", region="us")]  # not in EU: not counted as online
        + [dev("h100", model="H100")]
    )
    request = PlacementRequest(
        gpu_model="A100",
        gpu_count=8,
        gpus_per_node=1,
        regions=frozenset({"eu"}),
        max_price_per_gpu_hour_micro=2 * USD,
        min_reliability=0.9,
    )
    short = both(pool, request)
    assert isinstance(short, Shortfall)
    assert short.message.startswith(
        "need 8 × A100 (8×1) in eu at ≤ $2.00/GPU-h: 5 online, 3 rented, 1 below reliability 0.9;"
    )
    assert short.matching == 5
    assert short.eligible_devices == 1
    assert {e.filter: e.count for e in short.eliminated} == {"rented": 3, "reliability": 1}


def test_ties_are_broken_by_id_and_results_are_deterministic() -> None:
    pool = [dev(f"d{i}") for i in (5, 3, 9, 1)]
    request = PlacementRequest(gpu_model="A100", gpu_count=2, gpus_per_node=1)
    first = both(pool, request)
    second = both(list(reversed(pool)), request)
    assert isinstance(first, Placement)
    assert first == second
    assert first.device_ids == ("d1", "d3")


def test_better_devices_win_and_thresholds_filter() -> None:
    pool = [
        dev("cheap_flaky", price=USD // 4, reliability=0.80),
        dev("solid", price=USD, reliability=0.999, tier=1),
        dev("slow_net", price=USD, tier=None),
        dev("excluded", price=USD // 10),
        dev("small_vram", vram=16_000, price=USD // 10),
    ]
    request = PlacementRequest(
        gpu_model="A100",
        gpu_count=1,
        min_reliability=0.9,
        min_connectivity_tier=3,
        min_vram_mb=40_000,
        excluded_device_ids=frozenset({"excluded"}),
    )
    result = both(pool, request)
    assert isinstance(result, Placement)
    assert result.device_ids == ("solid",)
    assert score_device(pool[1]).connectivity == 1.0
    assert score_device(pool[2]).connectivity == 0.0


def test_cpu_request_places_cpu_devices_by_node() -> None:
    pool = [dev(f"c{i}", model=None, gpus=0, price=50_000) for i in range(3)] + [dev("g")]
    result = both(pool, PlacementRequest(gpu_model=None, node_count=3))
    assert isinstance(result, Placement)
    assert sorted(result.device_ids) == ["c0", "c1", "c2"]
    assert result.hourly_price_micro == 150_000


@pytest.mark.parametrize(
    "request_",
    [
        PlacementRequest(gpu_model="A100", gpu_count=0),
        PlacementRequest(gpu_model="A100", gpu_count=6, gpus_per_node=4),
        PlacementRequest(gpu_model="A100", gpu_count=6, node_count=4),
        PlacementRequest(gpu_model=None, node_count=0),
        PlacementRequest(gpu_model=None, gpu_count=2, node_count=1),
    ],
)
def test_invalid_requests_are_rejected(request_: PlacementRequest) -> None:
    with pytest.raises(InvalidPlacementRequest):
        place_reference([dev("a")], request_)


def test_index_take_and_release_change_what_is_bookable() -> None:
    pool = [dev("a", price=USD), dev("b", price=2 * USD)]
    index = PoolIndex.build(pool)
    request = PlacementRequest(gpu_model="A100", gpu_count=1)
    first = index.place(request)
    assert isinstance(first, Placement)
    assert first.device_ids == ("a",)
    index.take(first.device_ids)
    second = index.place(request)
    assert isinstance(second, Placement)
    assert second.device_ids == ("b",)
    index.take(["b"])
    short = index.place(request)
    assert isinstance(short, Shortfall)
    assert "2 rented" in short.message
    index.release(["a", "a"])  # releasing twice is harmless
    with pytest.raises(DeviceNotFree):
        index.take(["a", "b"])  # all or nothing: "a" stays free
    assert index.is_free("a")
    with pytest.raises(UnknownDevice):
        index.take(["nope"])
    again = index.place(request)
    assert isinstance(again, Placement)
    assert again.device_ids == ("a",)


def test_pricing_rounds_up_what_the_customer_pays() -> None:
    pool = [dev("a", gpus=2, price=1_000_001), dev("b", gpus=2, price=1_000_001)]
    result = both(pool, PlacementRequest(gpu_model="A100", gpu_count=4, gpus_per_node=2))
    assert isinstance(result, Placement)
    price = price_placement(result, duration_s=61, fee_bps=1_000)
    assert price.hourly_micro == 4_000_004
    # Each device: ceil(2_000_002 × 61 / 3600) = ceil(33_888.92…) = 33_889.
    assert [c.amount_micro for c in price.devices] == [33_889, 33_889]
    assert price.compute_micro == 67_778
    assert price.fee_micro == 6_778  # 6_777.8 rounds up
    assert price.total_micro == 74_556
    assert price.hourly_total_micro == 4_000_004 + 400_001  # fee 400_000.4 rounds up
    assert price_placement(result, duration_s=3600, fee_bps=0).total_micro == 4_000_004
    assert ceil_div(1, 3) == 1
    assert ceil_div(0, 3) == 0
    assert fee_micro(10_001, 1) == 2
    assert format_usd(2_000_000) == "$2.00"
    assert format_usd(1_234_500) == "$1.2345"

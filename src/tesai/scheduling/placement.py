"""Gang placement of a cluster request onto pool devices: pure, deterministic, explainable.

A request asks for ``gpu_count`` GPUs of one model (or ``node_count`` CPU nodes). Devices are
rented whole, so a placement is a *gang* of homogeneous nodes: ``nodes × gpus_per_node`` where
each chosen device has exactly ``gpus_per_node`` GPUs (a customer never pays for idle GPUs, and
data-parallel training wants equal nodes). Without an explicit per-node count the shapes are
tried fewest nodes first (8 GPUs: 1×8, 2×4, 4×2, 8×1). All devices are returned or none.

The decision, step by step (``place_reference`` is the executable specification; the fast
``PoolIndex`` in ``tesai.scheduling.index`` must agree with it on every input):

1. Filters, a chain of small named predicates (GPUStack-style). Identity filters (GPU model,
   region, country) decide which devices the request is about ("online" in a shortfall);
   eligibility filters (shape, excluded, rented, price, reliability, connectivity, proof score,
   VRAM) each count the devices they eliminate, first failing filter wins.
2. Scorers: every device gets a request-independent score in [0, 1], a weighted sum of price
   (cheaper is better), reliability, proof-of-compute score and bandwidth tier (``ScoringPolicy``).
   Ties are broken by device id, so the order is total.
3. Co-location: for each shape (fewest nodes first) the regions that can host it alone are
   compared by the sum of their best ``nodes`` scores (ties by region name); the first shape
   that fits in one region wins. Only if no shape fits in any single region, and the request
   allows it, the best devices across regions are taken (again fewest nodes first).
4. Otherwise a ``Shortfall`` says in numbers why ("need 8 × A100 in EU at ≤ $2.00/GPU-h:
   5 online, 3 rented, 1 below reliability 0.9 …").

Connectivity tiers follow the agent protocol: 1 is best (t1, ≥ 1600 Mbit/s) … 5 worst; ``None``
means not measured and counts as worst. Money is integer micro-USDC per GPU-hour (per node-hour
for CPU devices).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

MICRO_PER_USD: Final = 1_000_000
WORST_TIER: Final = 5


class InvalidPlacementRequest(ValueError):
    """The request cannot describe a gang (zero GPUs, GPU count not divisible by nodes, …)."""


@dataclass(frozen=True, slots=True)
class Device:
    """A device of the pool as placement sees it (a snapshot; ``free`` = not rented)."""

    id: str
    gpu_model: str | None
    gpu_count: int
    vram_mb: int
    region: str
    country: str
    price_per_gpu_hour_micro: int
    reliability: float
    verified_score: float
    connectivity_tier: int | None
    free: bool = True

    @property
    def billable_units(self) -> int:
        """GPUs billed per hour (a CPU device bills as one unit)."""
        return max(self.gpu_count, 1)


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """What a customer asks for. Empty ``regions``/``countries`` mean anywhere.

    ``min_connectivity_tier`` is a tier number (1 best): devices must be at that tier or better.
    """

    gpu_model: str | None = None
    gpu_count: int = 0
    node_count: int | None = None
    gpus_per_node: int | None = None
    max_price_per_gpu_hour_micro: int | None = None
    regions: frozenset[str] = frozenset()
    countries: frozenset[str] = frozenset()
    min_reliability: float = 0.0
    min_connectivity_tier: int | None = None
    min_verified_score: float = 0.0
    min_vram_mb: int = 0
    excluded_device_ids: frozenset[str] = frozenset()
    allow_cross_region: bool = True

    def shapes(self) -> tuple[Shape, ...]:
        """The gang shapes to try, fewest nodes first.

        Raises InvalidPlacementRequest when the counts do not describe a gang.
        """
        if self.gpu_model is None:
            if self.gpu_count:
                raise InvalidPlacementRequest("a CPU request has no GPUs; give a gpu_model")
            if not self.node_count or self.node_count < 1:
                raise InvalidPlacementRequest("a CPU request needs node_count >= 1")
            return (Shape(self.node_count, 0),)
        total = self.gpu_count
        if total < 1:
            if self.node_count and self.gpus_per_node:
                total = self.node_count * self.gpus_per_node
            else:
                raise InvalidPlacementRequest("gpu_count must be >= 1")
        per_node = self.gpus_per_node
        if per_node is None and self.node_count is not None:
            if self.node_count < 1 or total % self.node_count:
                raise InvalidPlacementRequest(
                    f"{total} GPUs cannot be split evenly over {self.node_count} nodes"
                )
            per_node = total // self.node_count
        if per_node is not None:
            if per_node < 1 or total % per_node:
                raise InvalidPlacementRequest(f"{total} GPUs is not a multiple of {per_node}")
            if self.node_count is not None and self.node_count * per_node != total:
                raise InvalidPlacementRequest("node_count × gpus_per_node must equal gpu_count")
            return (Shape(total // per_node, per_node),)
        return tuple(Shape(total // d, d) for d in range(total, 0, -1) if total % d == 0)

    @property
    def total_units(self) -> int:
        """GPUs (or CPU nodes) the request needs in all."""
        shape = self.shapes()[0]
        return shape.nodes * max(shape.gpus_per_node, 1)


@dataclass(frozen=True, slots=True)
class Shape:
    """A homogeneous gang: ``nodes`` devices of exactly ``gpus_per_node`` GPUs (0 = CPU)."""

    nodes: int
    gpus_per_node: int

    def __str__(self) -> str:
        return f"{self.nodes}×{self.gpus_per_node}" if self.gpus_per_node else f"{self.nodes}×CPU"


# --- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoringPolicy:
    """Weights of the device score (they should add up to 1).

    ``price_reference_micro`` is the price that scores 0.5: price score = ref / (ref + price), so
    the score never depends on the request and an index can keep devices sorted by it.
    """

    price_weight: float = 0.35
    reliability_weight: float = 0.30
    verified_weight: float = 0.20
    connectivity_weight: float = 0.15
    price_reference_micro: int = MICRO_PER_USD


DEFAULT_POLICY: Final = ScoringPolicy()


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    """A device's score components, each in [0, 1], and their weighted sum."""

    price: float
    reliability: float
    verified: float
    connectivity: float
    total: float


def score_device(device: Device, policy: ScoringPolicy = DEFAULT_POLICY) -> ScoreBreakdown:
    """Score one device (higher is better); independent of any request."""
    ref = policy.price_reference_micro
    price = ref / (ref + max(device.price_per_gpu_hour_micro, 0))
    reliability = min(max(device.reliability, 0.0), 1.0)
    verified = min(max(device.verified_score, 0.0), 1.0)
    tier = device.connectivity_tier
    connectivity = 0.0 if tier is None else (WORST_TIER + 1 - min(max(tier, 1), WORST_TIER)) / 5
    total = (
        policy.price_weight * price
        + policy.reliability_weight * reliability
        + policy.verified_weight * verified
        + policy.connectivity_weight * connectivity
    )
    return ScoreBreakdown(price, reliability, verified, connectivity, total)


# --- filters -------------------------------------------------------------------------------------


def format_usd(micro: int) -> str:
    """``2000000`` → ``$2.00`` (more decimals only when needed)."""
    text = f"{micro / MICRO_PER_USD:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


Predicate = Callable[[Device, bool], bool]
"""A prepared filter: ``(device, free) -> passes``."""


def _always(device: Device, free: bool) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """One named step of the filter chain.

    ``prepare(request)`` compiles the request's threshold into a fast ``(device, free)``
    predicate once per request; ``describe(request)`` says in words what it eliminates.
    """

    name: str
    prepare: Callable[[PlacementRequest], Predicate]
    describe: Callable[[PlacementRequest], str]


def _model(r: PlacementRequest) -> Predicate:
    model = r.gpu_model
    return lambda d, f: d.gpu_model == model


def _region(r: PlacementRequest) -> Predicate:
    regions = r.regions
    return (lambda d, f: d.region in regions) if regions else _always


def _country(r: PlacementRequest) -> Predicate:
    countries = r.countries
    return (lambda d, f: d.country in countries) if countries else _always


def _gpu_count(r: PlacementRequest) -> Predicate:
    counts = frozenset(s.gpus_per_node for s in r.shapes())
    return lambda d, f: d.gpu_count in counts


def _excluded(r: PlacementRequest) -> Predicate:
    excluded = r.excluded_device_ids
    return (lambda d, f: d.id not in excluded) if excluded else _always


def _rented(r: PlacementRequest) -> Predicate:
    return lambda d, f: f


def _price(r: PlacementRequest) -> Predicate:
    cap = r.max_price_per_gpu_hour_micro
    return _always if cap is None else (lambda d, f: d.price_per_gpu_hour_micro <= cap)


def _reliability(r: PlacementRequest) -> Predicate:
    floor = r.min_reliability
    return lambda d, f: d.reliability >= floor


def _connectivity(r: PlacementRequest) -> Predicate:
    limit = r.min_connectivity_tier
    if limit is None:
        return _always
    return lambda d, f: d.connectivity_tier is not None and d.connectivity_tier <= limit


def _verified(r: PlacementRequest) -> Predicate:
    floor = r.min_verified_score
    return lambda d, f: d.verified_score >= floor


def _vram(r: PlacementRequest) -> Predicate:
    floor = r.min_vram_mb
    return lambda d, f: d.vram_mb >= floor


IDENTITY_FILTERS: Final[tuple[DeviceFilter, ...]] = (
    DeviceFilter("gpu_model", _model, lambda r: "other model"),
    DeviceFilter("region", _region, lambda r: "elsewhere"),
    DeviceFilter("country", _country, lambda r: "abroad"),
)

ELIGIBILITY_FILTERS: Final[tuple[DeviceFilter, ...]] = (
    DeviceFilter("gpu_count", _gpu_count, lambda r: "with another GPU count per device"),
    DeviceFilter("excluded", _excluded, lambda r: "excluded (flapping or failed)"),
    DeviceFilter("rented", _rented, lambda r: "rented"),
    DeviceFilter(
        "price", _price, lambda r: f"above {format_usd(r.max_price_per_gpu_hour_micro or 0)}"
    ),
    DeviceFilter("reliability", _reliability, lambda r: f"below reliability {r.min_reliability:g}"),
    DeviceFilter(
        "connectivity",
        _connectivity,
        lambda r: f"below connectivity tier t{r.min_connectivity_tier}",
    ),
    DeviceFilter(
        "verified_score",
        _verified,
        lambda r: f"below verified score {r.min_verified_score:g}",
    ),
    DeviceFilter("vram", _vram, lambda r: f"under {r.min_vram_mb} MB VRAM"),
)


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlacedDevice:
    """One device of a placement, with the score components that got it chosen."""

    device_id: str
    region: str
    gpu_count: int
    price_per_gpu_hour_micro: int
    score: ScoreBreakdown

    @property
    def hourly_price_micro(self) -> int:
        return max(self.gpu_count, 1) * self.price_per_gpu_hour_micro


@dataclass(frozen=True, slots=True)
class Placement:
    """A gang that meets the request; ``region`` is None when it spans regions."""

    shape: Shape
    devices: tuple[PlacedDevice, ...]
    region: str | None
    score: float
    reasons: tuple[str, ...]

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(d.device_id for d in self.devices)

    @property
    def hourly_price_micro(self) -> int:
        """What the providers charge per hour for the whole gang (before the platform fee)."""
        return sum(d.hourly_price_micro for d in self.devices)


@dataclass(frozen=True, slots=True)
class Elimination:
    """How many candidate devices one filter removed, and why in words."""

    filter: str
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a request cannot be met, in numbers."""

    need: str
    matching: int
    eliminated: tuple[Elimination, ...]
    eligible_devices: int
    eligible_units: int
    shapes_tried: tuple[Shape, ...]
    message: str = field(default="")


def describe_need(request: PlacementRequest) -> str:
    """``8 × A100 in EU at ≤ $2.00/GPU-h`` (the start of a shortfall message)."""
    shapes = request.shapes()
    if request.gpu_model is None:
        text = f"{shapes[0].nodes} × CPU node"
        unit = "node-h"
    else:
        text = f"{request.total_units} × {request.gpu_model}"
        if request.gpus_per_node is not None or request.node_count is not None:
            text += f" ({shapes[0]})"
        unit = "GPU-h"
    if request.regions:
        text += " in " + "/".join(sorted(request.regions))
    if request.countries:
        text += " in " + "/".join(sorted(request.countries))
    if request.max_price_per_gpu_hour_micro is not None:
        text += f" at ≤ {format_usd(request.max_price_per_gpu_hour_micro)}/{unit}"
    return text


def build_shortfall(
    request: PlacementRequest,
    candidates: Iterable[tuple[Device, bool]],
    *,
    wrong_gpu_count: int = 0,
) -> Shortfall:
    """Count, per filter, the devices it eliminated (first failing filter wins).

    ``candidates`` are (device, free) pairs; devices failing an identity filter are ignored.
    ``wrong_gpu_count``: devices already known to pass the identity filters and fail the first
    eligibility filter (GPU count), counted without being listed (an index knows whole buckets).
    """
    shapes = request.shapes()
    matching = wrong_gpu_count
    eligible = 0
    eligible_units = 0
    counts = [0] * len(ELIGIBILITY_FILTERS)
    counts[0] = wrong_gpu_count
    identity = [f.prepare(request) for f in IDENTITY_FILTERS]
    checks = list(enumerate(f.prepare(request) for f in ELIGIBILITY_FILTERS))
    for device, free in candidates:
        if not all(passes(device, free) for passes in identity):
            continue
        matching += 1
        for i, passes in checks:
            if not passes(device, free):
                counts[i] += 1
                break
        else:
            eligible += 1
            eligible_units += device.billable_units
    eliminated = tuple(
        Elimination(flt.name, n, flt.describe(request))
        for flt, n in zip(ELIGIBILITY_FILTERS, counts, strict=True)
        if n
    )
    need = describe_need(request)
    parts = [f"{matching} online"] + [f"{e.count} {e.reason}" for e in eliminated]
    unit = "GPUs" if request.gpu_model is not None else "nodes"
    tail = f"{eligible} eligible ({eligible_units} {unit})"
    if eligible_units >= request.total_units:
        tail += ", but no set of " + ", ".join(str(s) for s in shapes)
        tail += " fits in one region" if not request.allow_cross_region else " nodes fits"
    message = f"need {need}: " + ", ".join(parts) + f"; {tail}"
    return Shortfall(need, matching, eliminated, eligible, eligible_units, shapes, message)


# --- the reference implementation --------------------------------------------------------------


def explain_region(chosen: str, ranked: Sequence[tuple[float, str]], shape: Shape) -> str:
    """Why this region: its set score against the next regions able to host the shape."""
    others = ", ".join(f"{region} {score:.3f}" for score, region in ranked[1:4])
    text = f"region {chosen}: best set score {ranked[0][0]:.3f} for {shape}"
    if others:
        text += f" of {len(ranked)} regions able to host it alone (next: {others})"
    else:
        text += " (the only region able to host it alone)"
    return text


def make_placement(
    shape: Shape,
    chosen: Sequence[tuple[Device, ScoreBreakdown]],
    region: str | None,
    reasons: list[str],
) -> Placement:
    """Assemble a Placement from the chosen (device, score) pairs, best first."""
    placed = tuple(
        PlacedDevice(d.id, d.region, d.gpu_count, d.price_per_gpu_hour_micro, s) for d, s in chosen
    )
    total = math.fsum(s.total for _, s in chosen)
    return Placement(shape, placed, region, total, tuple(reasons))


def shape_reason(shape: Shape, shapes: Sequence[Shape]) -> str:
    """Why this gang shape: the fewest nodes that could be met."""
    tried = [str(s) for s in shapes[: shapes.index(shape)]]
    text = f"shape {shape}: fewest nodes that can be met"
    return text + (f" (not met: {', '.join(tried)})" if tried else "")


def place_reference(
    devices: Iterable[Device],
    request: PlacementRequest,
    policy: ScoringPolicy = DEFAULT_POLICY,
) -> Placement | Shortfall:
    """Place a request by a plain scan over all devices (the specification of ``PoolIndex``)."""
    shapes = request.shapes()
    pool = list(devices)
    checks = [f.prepare(request) for f in IDENTITY_FILTERS + ELIGIBILITY_FILTERS]
    eligible = [d for d in pool if all(passes(d, d.free) for passes in checks)]
    scored = sorted(
        ((d, score_device(d, policy)) for d in eligible), key=lambda p: (-p[1].total, p[0].id)
    )
    for shape in shapes:
        by_region: dict[str, list[tuple[Device, ScoreBreakdown]]] = {}
        for d, s in scored:
            if d.gpu_count == shape.gpus_per_node:
                by_region.setdefault(d.region, []).append((d, s))
        ranked = sorted(
            (-math.fsum(s.total for _, s in group[: shape.nodes]), region)
            for region, group in by_region.items()
            if len(group) >= shape.nodes
        )
        if ranked:
            pos_ranked = [(-neg, region) for neg, region in ranked]
            region = pos_ranked[0][1]
            reasons = [
                shape_reason(shape, shapes),
                explain_region(region, pos_ranked, shape),
            ]
            return make_placement(shape, by_region[region][: shape.nodes], region, reasons)
    if request.allow_cross_region:
        for shape in shapes:
            group = [(d, s) for d, s in scored if d.gpu_count == shape.gpus_per_node]
            if len(group) >= shape.nodes:
                chosen = group[: shape.nodes]
                regions = sorted({d.region for d, _ in chosen})
                reasons = [
                    shape_reason(shape, shapes),
                    "no single region can host any shape; spread over " + ", ".join(regions),
                ]
                return make_placement(shape, chosen, None, reasons)
    return build_shortfall(request, ((d, d.free) for d in pool))

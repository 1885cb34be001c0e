"""Pure gang placement and pricing over a pool snapshot (no I/O).

``placement`` holds the models, filter chain, scorers and the reference algorithm; ``index`` the
fast ``PoolIndex`` with identical results; ``pricing`` the integer money arithmetic.
"""

from tesai.scheduling.index import DeviceNotFree, PoolIndex, UnknownDevice
from tesai.scheduling.placement import (
    DEFAULT_POLICY,
    Device,
    InvalidPlacementRequest,
    Placement,
    PlacementRequest,
    ScoringPolicy,
    Shortfall,
    place_reference,
)
from tesai.scheduling.pricing import PriceBreakdown, price_devices, price_placement

__all__ = [
    "DEFAULT_POLICY",
    "Device",
    "DeviceNotFree",
    "InvalidPlacementRequest",
    "Placement",
    "PlacementRequest",
    "PoolIndex",
    "PriceBreakdown",
    "ScoringPolicy",
    "Shortfall",
    "UnknownDevice",
    "place_reference",
    "price_devices",
    "price_placement",
]

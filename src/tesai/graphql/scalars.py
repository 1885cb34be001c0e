"""Scalars shared by the read models (registered in ``schema.SCALARS``)."""

from __future__ import annotations

from typing import Any, NewType

import strawberry

MicroUsdc = NewType("MicroUsdc", int)
"""Use for every amount of money: GraphQL's ``Int`` stops at 2³¹ − 1 (≈ 2,147 USDC)."""

SCALARS: dict[object, Any] = {
    MicroUsdc: strawberry.scalar(
        name="MicroUSDC",
        description="An amount of USDC in millionths, as an integer (may exceed 32 bits).",
        serialize=int,
        parse_value=int,
    ),
}

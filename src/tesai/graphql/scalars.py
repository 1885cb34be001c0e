"""Scalars shared by the read models (registered in ``schema.SCALARS``)."""

from __future__ import annotations

from typing import Any, NewType

import strawberry

from graphql import GraphQLError

MicroUsdc = NewType("MicroUsdc", int)
"""Use for every amount of money: GraphQL's ``Int`` stops at 2³¹ − 1 (≈ 2,147 USDC)."""


def parse_micro(value: Any) -> int:
    """An argument of money: an integer, never a string, float or boolean taken as one
    (the same rule as REST's ``tesai.kit.money.Micro``). A ``GraphQLError``, so the client
    sees an ``invalid_query`` error, not a masked internal one."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise GraphQLError(f"MicroUSDC must be an integer, not {type(value).__name__}")
    return value


SCALARS: dict[object, Any] = {
    MicroUsdc: strawberry.scalar(
        name="MicroUSDC",
        description="An amount of USDC in millionths, as an integer (may exceed 32 bits).",
        serialize=int,
        parse_value=parse_micro,
    ),
}

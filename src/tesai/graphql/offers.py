"""Read models of the marketplace: ``offers`` (the same search as GET /api/v1/offers)."""

from __future__ import annotations

import strawberry

from tesai.clusters.offers import OfferQuery, search
from tesai.errors import InvalidInput
from tesai.graphql.context import GraphQLContext
from tesai.graphql.scalars import MicroUsdc


@strawberry.type
class Offer:
    device_id: strawberry.ID
    gpu_model: str | None
    gpu_count: int
    vram_mb: int
    region: str
    country: str
    price_per_gpu_hour_micro: MicroUsdc
    reliability: float
    verified_score: float
    connectivity_tier: int | None


@strawberry.type
class OfferGroup:
    """Per GPU model: listed (online or rented) and bookable right now."""

    gpu_model: str | None
    listed_devices: int
    bookable_devices: int
    bookable_gpus: int
    min_price_per_gpu_hour_micro: MicroUsdc | None


@strawberry.type
class Offers:
    offers: list[Offer]
    groups: list[OfferGroup]


async def resolve_offers(
    info: strawberry.Info[GraphQLContext, None],
    gpu_model: str | None = None,
    min_gpus: int = 0,
    region: str | None = None,
    max_price_per_gpu_hour_micro: MicroUsdc | None = None,
    min_reliability: float = 0.0,
    sort: str = "price",
    limit: int = 100,
) -> Offers:
    try:
        query = OfferQuery(
            gpu_model=gpu_model,
            min_gpus=min_gpus,
            region=region,
            max_price_per_gpu_hour_micro=max_price_per_gpu_hour_micro,
            min_reliability=min_reliability,
            sort=sort,  # type: ignore[arg-type]
            limit=limit,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from exc
    async with info.context.db() as session:
        found = await search(session, query)
    return Offers(
        offers=[
            Offer(
                device_id=strawberry.ID(str(o.device_id)),
                gpu_model=o.gpu_model,
                gpu_count=o.gpu_count,
                vram_mb=o.vram_mb,
                region=o.region,
                country=o.country,
                price_per_gpu_hour_micro=MicroUsdc(o.price_per_gpu_hour_micro),
                reliability=o.reliability,
                verified_score=o.verified_score,
                connectivity_tier=o.connectivity_tier,
            )
            for o in found.offers
        ],
        groups=[
            OfferGroup(
                gpu_model=g.gpu_model,
                listed_devices=g.listed_devices,
                bookable_devices=g.bookable_devices,
                bookable_gpus=g.bookable_gpus,
                min_price_per_gpu_hour_micro=(
                    MicroUsdc(g.min_price_per_gpu_hour_micro)
                    if g.min_price_per_gpu_hour_micro is not None
                    else None
                ),
            )
            for g in found.groups
        ],
    )


@strawberry.type
class Query:
    offers: Offers = strawberry.field(
        resolver=resolve_offers,
        description="Bookable devices with counts per GPU model (same as GET /api/v1/offers).",
    )

"""Offer search: what a customer can book right now, with bookable counts."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.clusters.pool import load_pool
from tesai.kit.time import utcnow
from tesai.scheduling import placement as pl


class OfferQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gpu_model: str | None = Field(default=None, max_length=128)
    min_gpus: int = Field(default=0, ge=0, le=64)
    """GPUs per device, at least."""
    min_vram_mb: int = Field(default=0, ge=0, le=10**7)
    region: str | None = Field(default=None, max_length=64)
    country: str | None = Field(default=None, min_length=2, max_length=2)
    max_price_per_gpu_hour_micro: int | None = Field(default=None, ge=0, le=10**12)
    min_reliability: float = Field(default=0.0, ge=0.0, le=1.0)
    min_connectivity_tier: int | None = Field(default=None, ge=1, le=5)
    """Tier number, 1 best: devices at this tier or better."""
    min_verified_score: float = Field(default=0.0, ge=0.0, le=1.0)
    sort: Literal["price", "reliability", "score"] = "price"
    limit: int = Field(default=100, ge=1, le=1000)


class Offer(BaseModel):
    device_id: uuid.UUID
    gpu_model: str | None
    gpu_count: int
    vram_mb: int
    region: str
    country: str
    price_per_gpu_hour_micro: int
    reliability: float
    verified_score: float
    connectivity_tier: int | None


class OfferGroup(BaseModel):
    gpu_model: str | None
    listed_devices: int
    bookable_devices: int
    bookable_gpus: int
    min_price_per_gpu_hour_micro: int | None


class OffersOut(BaseModel):
    offers: list[Offer]
    groups: list[OfferGroup]
    """Per GPU model: listed (online or rented) vs bookable now, over the filtered pool."""
    platform_fee_bps: int = 0
    """The platform fee, in basis points, added on top of every listed (provider's) price:
    a quote's hourly total is the listed price plus this fee (1000 = 10 %)."""


def _matches(d: pl.Device, q: OfferQuery) -> bool:
    return (
        (q.gpu_model is None or d.gpu_model == q.gpu_model)
        and d.gpu_count >= q.min_gpus
        and d.vram_mb >= q.min_vram_mb
        and (q.region is None or d.region == q.region)
        and (q.country is None or d.country == q.country.upper())
        and (
            q.max_price_per_gpu_hour_micro is None
            or d.price_per_gpu_hour_micro <= q.max_price_per_gpu_hour_micro
        )
        and d.reliability >= q.min_reliability
        and (
            q.min_connectivity_tier is None
            or (d.connectivity_tier is not None and d.connectivity_tier <= q.min_connectivity_tier)
        )
        and d.verified_score >= q.min_verified_score
    )


def search_pool(pool: list[pl.Device], q: OfferQuery, fee_bps: int = 0) -> OffersOut:
    """Filter and sort the pool (pure); ``fee_bps`` is the platform fee the answer states."""
    matching = [d for d in pool if _matches(d, q)]
    groups: dict[str | None, list[pl.Device]] = {}
    for d in matching:
        groups.setdefault(d.gpu_model, []).append(d)
    free = [d for d in matching if d.free]
    keys = {
        "price": lambda d: (d.price_per_gpu_hour_micro, -d.reliability, d.id),
        "reliability": lambda d: (-d.reliability, d.price_per_gpu_hour_micro, d.id),
        "score": lambda d: (-d.verified_score, d.price_per_gpu_hour_micro, d.id),
    }
    free.sort(key=keys[q.sort])
    return OffersOut(
        offers=[
            Offer(
                device_id=uuid.UUID(d.id),
                gpu_model=d.gpu_model,
                gpu_count=d.gpu_count,
                vram_mb=d.vram_mb,
                region=d.region,
                country=d.country,
                price_per_gpu_hour_micro=d.price_per_gpu_hour_micro,
                reliability=d.reliability,
                verified_score=round(d.verified_score, 4),
                connectivity_tier=d.connectivity_tier,
            )
            for d in free[: q.limit]
        ],
        groups=[
            OfferGroup(
                gpu_model=model,
                listed_devices=len(ds),
                bookable_devices=sum(1 for d in ds if d.free),
                bookable_gpus=sum(d.gpu_count for d in ds if d.free),
                min_price_per_gpu_hour_micro=min(
                    (d.price_per_gpu_hour_micro for d in ds if d.free), default=None
                ),
            )
            for model, ds in sorted(groups.items(), key=lambda kv: kv[0] or "")
        ],
        platform_fee_bps=fee_bps,
    )


async def search(session: AsyncSession, q: OfferQuery, *, fee_bps: int = 0) -> OffersOut:
    """Offers of the pool now; the answer states ``fee_bps`` as its platform fee."""
    return search_pool(await load_pool(session, utcnow()), q, fee_bps)

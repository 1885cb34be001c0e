"""The escrow interface clusters use: one hold per cluster, settled by usage, then released.

Called by the cluster lifecycle (create, extend, settle, terminate); every function takes
the caller's session and an idempotency key derived from the cluster event (for example
``f"cluster:{id}:create"``), so a retried step never moves money twice.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import service
from tesai.billing.ledger import Movement, balance_of
from tesai.billing.money import hold_for


def cluster_hold_ref(cluster_id: uuid.UUID) -> str:
    return f"cluster:{cluster_id}"


def cluster_hold_amount(
    *, gpus: int, price_per_gpu_hour_micro: int, duration_s: int, fee_bps: int
) -> int:
    """GPUs × price per GPU-hour × duration, plus the platform fee (rounded up)."""
    return hold_for(gpus, price_per_gpu_hour_micro, duration_s, fee_bps)


async def place_cluster_hold(
    session: AsyncSession,
    *,
    customer_user_id: uuid.UUID,
    cluster_id: uuid.UUID,
    amount_micro: int,
    idempotency_key: str,
) -> Movement:
    """Hold ``amount_micro`` of the customer's available funds for the cluster.

    Raises ``InsufficientFunds`` (402) when the customer cannot cover it.
    """
    return await service.place_hold(
        session,
        user_id=customer_user_id,
        amount_micro=amount_micro,
        ref=cluster_hold_ref(cluster_id),
        idempotency_key=idempotency_key,
    )


async def extend_cluster_hold(
    session: AsyncSession,
    *,
    customer_user_id: uuid.UUID,
    cluster_id: uuid.UUID,
    amount_micro: int,
    idempotency_key: str,
) -> Movement:
    """Add to the cluster's hold (the cluster was extended). Raises ``InsufficientFunds``."""
    return await service.extend_hold(
        session,
        user_id=customer_user_id,
        amount_micro=amount_micro,
        ref=cluster_hold_ref(cluster_id),
        idempotency_key=idempotency_key,
    )


async def settle_cluster_usage(
    session: AsyncSession,
    *,
    customer_user_id: uuid.UUID,
    cluster_id: uuid.UUID,
    provider_user_id: uuid.UUID,
    provider_amount_micro: int,
    fee_bps: int,
    idempotency_key: str,
) -> Movement:
    """Pay one provider for usage out of the cluster's hold, plus the platform fee.

    ``result["exhausted"]`` is true when the hold could not cover it all (what was left was
    paid): the caller must stop the cluster with reason ``budget_exhausted``.
    """
    return await service.settle_usage(
        session,
        user_id=customer_user_id,
        ref=cluster_hold_ref(cluster_id),
        provider_user_id=provider_user_id,
        provider_amount_micro=provider_amount_micro,
        fee_bps=fee_bps,
        idempotency_key=idempotency_key,
    )


async def release_cluster_hold(
    session: AsyncSession,
    *,
    customer_user_id: uuid.UUID,
    cluster_id: uuid.UUID,
    idempotency_key: str,
) -> Movement:
    """Return what is left of the cluster's hold to available (end, early stop, failure)."""
    return await service.release_hold(
        session,
        user_id=customer_user_id,
        ref=cluster_hold_ref(cluster_id),
        idempotency_key=idempotency_key,
    )


async def cluster_hold_balance(
    session: AsyncSession, *, customer_user_id: uuid.UUID, cluster_id: uuid.UUID
) -> int:
    """What the cluster's hold still has (micro-USDC)."""
    return await balance_of(session, service.held(customer_user_id, cluster_hold_ref(cluster_id)))

"""Money movements: each one ledger transaction, balanced, idempotent and audited.

Every function takes the session, typed arguments and an ``idempotency_key``; calling it
again with the same key and arguments returns the first result (``Movement.replayed``),
with other arguments raises ``IdempotencyKeyReused``. They flush and never commit.

    deposit         treasury            → customer available
    grant           platform credits    → customer available
    hold / extend   customer available  → customer held (one account per hold ``ref``)
    settle          customer held       → provider earnings + platform fees
    release         customer held (all) → customer available
    payout request  provider earnings   → provider pending payout
    payout complete provider pending    → treasury (USDC left on chain)
    payout reverse  provider pending    → provider earnings
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from tesai.accounts.models import User
from tesai.audit.service import record as audit
from tesai.billing.errors import AmountInvalid
from tesai.billing.ledger import (
    AccountKind,
    AccountRef,
    Leg,
    Movement,
    Plan,
    PostRequest,
    checkpoint,
    post,
    post_batch,
    require_funds,
)
from tesai.billing.money import request_hash, split_capped
from tesai.errors import AppError, NotFound

if TYPE_CHECKING:
    from tesai.billing.guardrails import CapRoom


def available(user_id: uuid.UUID) -> AccountRef:
    return AccountRef(user_id, AccountKind.CUSTOMER_AVAILABLE)


def held(user_id: uuid.UUID, ref: str) -> AccountRef:
    return AccountRef(user_id, AccountKind.CUSTOMER_HELD, ref)


def earnings(user_id: uuid.UUID) -> AccountRef:
    return AccountRef(user_id, AccountKind.PROVIDER_EARNINGS)


def pending_payout(user_id: uuid.UUID) -> AccountRef:
    return AccountRef(user_id, AccountKind.PROVIDER_PENDING_PAYOUT)


TREASURY = AccountRef(None, AccountKind.PLATFORM_TREASURY)
CREDITS = AccountRef(None, AccountKind.PLATFORM_CREDITS)
FEES = AccountRef(None, AccountKind.PLATFORM_FEES)


def _positive(amount_micro: int) -> None:
    if amount_micro <= 0:
        raise AmountInvalid("Amount must be a positive number of micro-USDC")


async def _audited(
    session: AsyncSession,
    movement: Movement,
    *,
    action: str,
    actor_user_id: uuid.UUID | None,
    subject_type: str,
    subject_id: str,
    details: dict[str, Any],
) -> Movement:
    if not movement.replayed:
        await audit(
            session,
            action=action,
            actor_user_id=actor_user_id,
            actor_kind="user" if actor_user_id else "system",
            subject_type=subject_type,
            subject_id=subject_id,
            details={**details, "ledger_transaction_id": movement.transaction_id},
        )
        checkpoint("audited")
    return movement


def _transfer(source: AccountRef, dest: AccountRef, amount: int) -> list[Leg]:
    return [Leg(source, -amount), Leg(dest, amount)]


async def credit_deposit(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    amount_micro: int,
    signature: str,
    idempotency_key: str,
) -> Movement:
    """Credit a confirmed on-chain deposit to the customer's available balance."""
    _positive(amount_micro)

    def plan(_: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        return _transfer(TREASURY, available(user_id), amount_micro), {"amount": amount_micro}

    movement = await post(
        session,
        kind="deposit",
        key=idempotency_key,
        request_hash=request_hash(user=user_id, amount=amount_micro, signature=signature),
        plan=plan,
        accounts=[TREASURY, available(user_id)],
        memo=f"deposit {signature}",
        refs={"signature": signature, "user_id": str(user_id)},
    )
    return await _audited(
        session,
        movement,
        action="money.deposit_credited",
        actor_user_id=None,
        subject_type="user",
        subject_id=str(user_id),
        details={"amount_micro": amount_micro, "signature": signature},
    )


async def admin_grant_credit(
    session: AsyncSession,
    *,
    admin_user_id: uuid.UUID | None,
    user_id: uuid.UUID,
    amount_micro: int,
    reason: str,
    idempotency_key: str,
) -> Movement:
    """Grant credit (promotion, private deployment) from the platform credits account.

    Raises ``NotFound`` when the user does not exist.
    """
    _positive(amount_micro)
    if await session.get(User, user_id) is None:
        raise NotFound("No such user")

    def plan(_: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        return _transfer(CREDITS, available(user_id), amount_micro), {"amount": amount_micro}

    movement = await post(
        session,
        kind="grant",
        key=idempotency_key,
        request_hash=request_hash(user=user_id, amount=amount_micro, reason=reason),
        plan=plan,
        accounts=[CREDITS, available(user_id)],
        memo=reason[:500],
        refs={"user_id": str(user_id), "granted_by": str(admin_user_id)},
    )
    return await _audited(
        session,
        movement,
        action="money.credit_granted",
        actor_user_id=admin_user_id,
        subject_type="user",
        subject_id=str(user_id),
        details={"amount_micro": amount_micro, "reason": reason},
    )


def _hold_request(
    *, user_id: uuid.UUID, amount_micro: int, ref: str, idempotency_key: str, kind: str = "hold"
) -> PostRequest:
    """The movement of ``place_hold``: available → the hold ``ref``, refused when short."""
    _positive(amount_micro)
    src, dst = available(user_id), held(user_id, ref)

    def plan(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        require_funds(balances[src], amount_micro, "available balance")
        return _transfer(src, dst, amount_micro), {"amount": amount_micro}

    return PostRequest(
        kind=kind,
        key=idempotency_key,
        request_hash=request_hash(user=user_id, amount=amount_micro, ref=ref),
        plan=plan,
        accounts=[src, dst],
        memo=f"{kind} {ref}",
        refs={"hold": ref, "user_id": str(user_id)},
        audit={
            "action": f"money.{kind}",
            "actor_user_id": user_id,
            "subject_type": "hold",
            "subject_id": ref,
            "details": {"amount_micro": amount_micro},
        },
    )


async def place_hold(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    amount_micro: int,
    ref: str,
    idempotency_key: str,
    kind: str = "hold",
) -> Movement:
    """Move ``amount_micro`` from available into the hold ``ref``.

    Raises ``InsufficientFunds`` (402) when available is short; nothing moves then.
    """
    req = _hold_request(
        user_id=user_id,
        amount_micro=amount_micro,
        ref=ref,
        idempotency_key=idempotency_key,
        kind=kind,
    )
    movement = await post(
        session,
        kind=req.kind,
        key=req.key,
        request_hash=req.request_hash,
        plan=req.plan,
        accounts=req.accounts,
        memo=req.memo,
        refs=req.refs,
    )
    assert req.audit is not None
    return await _audited(session, movement, **req.audit)


@dataclass(frozen=True)
class NewHold:
    """One ``place_hold`` for ``place_holds``."""

    user_id: uuid.UUID
    amount_micro: int
    ref: str
    idempotency_key: str


async def place_holds(
    session: AsyncSession,
    holds: Sequence[NewHold],
    *,
    caps: Mapping[uuid.UUID, CapRoom] | None = None,
) -> list[Movement | AppError]:
    """``place_hold`` for many holds in a few statements (same keys, rules and audit rows),
    decided in order as one by one would: a hold that cannot be covered gets its
    ``InsufficientFunds`` in its slot. With ``caps`` (the customers' locked cap rows, see
    ``guardrails.lock_caps``), a hold over its customer's cap gets its ``SpendCapExceeded``
    first, and a refused hold counts against neither funds nor cap for the ones after it."""
    rooms = caps or {}
    requests = []
    for h in holds:
        req = _hold_request(
            user_id=h.user_id,
            amount_micro=h.amount_micro,
            ref=h.ref,
            idempotency_key=h.idempotency_key,
        )
        room = rooms.get(h.user_id)
        if room is not None:
            req = replace(req, plan=_within_cap(req.plan, room, h.amount_micro))
        requests.append(req)
    return await post_batch(session, requests)


def _within_cap(plan: Plan, room: CapRoom, amount_micro: int) -> Plan:
    """``plan``, refused first when the hold would pass the cap; counted when it is made."""

    def capped(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        refused = room.refusal(amount_micro)
        if refused is not None:
            raise refused
        legs, result = plan(balances)
        room.take(amount_micro)
        return legs, result

    return capped


async def extend_hold(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    amount_micro: int,
    ref: str,
    idempotency_key: str,
) -> Movement:
    """Add ``amount_micro`` to the hold ``ref`` (same rules as ``place_hold``)."""
    return await place_hold(
        session,
        user_id=user_id,
        amount_micro=amount_micro,
        ref=ref,
        idempotency_key=idempotency_key,
        kind="hold_extend",
    )


async def settle_usage(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    ref: str,
    provider_user_id: uuid.UUID,
    provider_amount_micro: int,
    fee_bps: int,
    idempotency_key: str,
) -> Movement:
    """Pay usage out of the hold ``ref``: provider earnings plus the platform fee on top.

    When the hold has less than the charge, what is left is split (see
    ``money.split_capped``) and the result says ``exhausted: true`` — the caller stops the
    cluster. Result: ``provider``, ``fee``, ``charged``, ``exhausted``.
    """
    request = _settle_request(
        UsageCharge(user_id, ref, provider_user_id, provider_amount_micro, idempotency_key),
        fee_bps,
    )
    movement = await post(
        session,
        kind=request.kind,
        key=request.key,
        request_hash=request.request_hash,
        plan=request.plan,
        accounts=request.accounts,
        memo=request.memo,
        refs=request.refs,
    )
    return await _audited(
        session,
        movement,
        action="money.usage_settled",
        actor_user_id=None,
        subject_type="hold",
        subject_id=ref,
        details={"provider_user_id": str(provider_user_id), **movement.result},
    )


async def release_hold(
    session: AsyncSession, *, user_id: uuid.UUID, ref: str, idempotency_key: str
) -> Movement:
    """Return everything left in the hold ``ref`` to available. Result: ``amount``."""
    hold, dst = held(user_id, ref), available(user_id)

    def plan(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        rest = balances[hold]
        return _transfer(hold, dst, rest), {"amount": rest}

    movement = await post(
        session,
        kind="release",
        key=idempotency_key,
        request_hash=request_hash(user=user_id, ref=ref),
        plan=plan,
        accounts=[hold, dst],
        memo=f"release {ref}",
        refs={"hold": ref, "user_id": str(user_id)},
    )
    return await _audited(
        session,
        movement,
        action="money.hold_released",
        actor_user_id=None,
        subject_type="hold",
        subject_id=ref,
        details=movement.result,
    )


async def request_payout(
    session: AsyncSession,
    *,
    provider_user_id: uuid.UUID,
    amount_micro: int,
    payout_id: uuid.UUID,
    idempotency_key: str,
) -> Movement:
    """Reserve ``amount_micro`` of earnings for a payout (earnings → pending payout)."""
    _positive(amount_micro)
    src, dst = earnings(provider_user_id), pending_payout(provider_user_id)

    def plan(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        require_funds(balances[src], amount_micro, "earnings")
        return _transfer(src, dst, amount_micro), {"amount": amount_micro}

    movement = await post(
        session,
        kind="payout_request",
        key=idempotency_key,
        request_hash=request_hash(user=provider_user_id, amount=amount_micro, payout=payout_id),
        plan=plan,
        accounts=[src, dst],
        memo=f"payout {payout_id}",
        refs={"payout_id": str(payout_id), "user_id": str(provider_user_id)},
    )
    return await _audited(
        session,
        movement,
        action="money.payout_requested",
        actor_user_id=provider_user_id,
        subject_type="payout",
        subject_id=str(payout_id),
        details={"amount_micro": amount_micro},
    )


async def complete_payout(
    session: AsyncSession,
    *,
    provider_user_id: uuid.UUID,
    amount_micro: int,
    payout_id: uuid.UUID,
    signature: str,
    idempotency_key: str,
) -> Movement:
    """The payout's transfer is confirmed on chain: pending payout → treasury."""
    _positive(amount_micro)
    src = pending_payout(provider_user_id)

    def plan(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        require_funds(balances[src], amount_micro, "pending payout")
        return _transfer(src, TREASURY, amount_micro), {"amount": amount_micro}

    movement = await post(
        session,
        kind="payout_complete",
        key=idempotency_key,
        request_hash=request_hash(
            user=provider_user_id, amount=amount_micro, payout=payout_id, signature=signature
        ),
        plan=plan,
        accounts=[src, TREASURY],
        memo=f"payout {payout_id} paid {signature}",
        refs={"payout_id": str(payout_id), "signature": signature},
    )
    return await _audited(
        session,
        movement,
        action="money.payout_paid",
        actor_user_id=None,
        subject_type="payout",
        subject_id=str(payout_id),
        details={"amount_micro": amount_micro, "signature": signature},
    )


async def reverse_payout(
    session: AsyncSession,
    *,
    provider_user_id: uuid.UUID,
    amount_micro: int,
    payout_id: uuid.UUID,
    reason: str,
    idempotency_key: str,
) -> Movement:
    """A payout failed or expired: pending payout → back to earnings."""
    _positive(amount_micro)
    src, dst = pending_payout(provider_user_id), earnings(provider_user_id)

    def plan(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        require_funds(balances[src], amount_micro, "pending payout")
        return _transfer(src, dst, amount_micro), {"amount": amount_micro}

    movement = await post(
        session,
        kind="payout_reverse",
        key=idempotency_key,
        request_hash=request_hash(
            user=provider_user_id, amount=amount_micro, payout=payout_id, reason=reason
        ),
        plan=plan,
        accounts=[src, dst],
        memo=f"payout {payout_id} reversed: {reason}"[:500],
        refs={"payout_id": str(payout_id), "reason": reason},
    )
    return await _audited(
        session,
        movement,
        action="money.payout_reversed",
        actor_user_id=None,
        subject_type="payout",
        subject_id=str(payout_id),
        details={"amount_micro": amount_micro, "reason": reason},
    )


@dataclass(frozen=True)
class UsageCharge:
    """One ``settle_usage`` call for ``settle_usage_many``."""

    user_id: uuid.UUID
    ref: str
    provider_user_id: uuid.UUID
    provider_amount_micro: int
    idempotency_key: str


def _settle_request(charge: UsageCharge, fee_bps: int) -> PostRequest:
    hold = held(charge.user_id, charge.ref)
    prov = earnings(charge.provider_user_id)
    amount = charge.provider_amount_micro
    if amount < 0:
        raise AmountInvalid("Usage amount must not be negative")

    def plan(balances: dict[AccountRef, int]) -> tuple[list[Leg], dict[str, Any]]:
        split = split_capped(amount, fee_bps, balances[hold])
        legs = [Leg(hold, -split.total), Leg(prov, split.provider), Leg(FEES, split.fee)]
        return legs, {
            "provider": split.provider,
            "fee": split.fee,
            "charged": split.total,
            "exhausted": split.provider < amount,
        }

    return PostRequest(
        kind="settle",
        key=charge.idempotency_key,
        request_hash=request_hash(
            user=charge.user_id,
            ref=charge.ref,
            provider=charge.provider_user_id,
            amount=amount,
            fee_bps=fee_bps,
        ),
        plan=plan,
        accounts=[hold, prov, FEES],
        memo=f"usage {charge.ref}",
        refs={
            "hold": charge.ref,
            "user_id": str(charge.user_id),
            "provider_id": str(charge.provider_user_id),
        },
        audit={
            "action": "money.usage_settled",
            "actor_user_id": None,
            "subject_type": "hold",
            "subject_id": charge.ref,
            "details": {"provider_user_id": str(charge.provider_user_id), "amount_micro": amount},
        },
    )


async def settle_usage_many(
    session: AsyncSession, charges: list[UsageCharge], *, fee_bps: int
) -> list[Movement | AppError]:
    """``settle_usage`` for many holds in a few statements (same results, same keys)."""
    return await post_batch(session, [_settle_request(c, fee_bps) for c in charges])

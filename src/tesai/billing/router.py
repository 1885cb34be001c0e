"""Money statements and admin credit grants.

- ``GET  /customer/balance``   available and held
- ``GET  /customer/ledger``    postings, JSON or ``?format=csv``
- ``GET  /customer/usage``     seconds, price and amount per cluster node
- ``GET  /customer/invoices``  one statement per month
- ``GET  /provider/earnings``  earnings, pending and paid-out totals
- ``GET  /provider/usage``     what each device earned per cluster node
- ``POST /internal/credits``   admin grant (``Idempotency-Key`` required)
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import func, select

from tesai.auth.deps import AdminUser, CustomerUser, ProviderUser
from tesai.billing import service, statements
from tesai.billing.idempotency import IdempotencyKeyHeader, run_once
from tesai.billing.ledger import AccountKind
from tesai.billing.models import LedgerPosting, LedgerTransaction
from tesai.billing.schemas import (
    BalanceOut,
    EarningsOut,
    GrantIn,
    LedgerLineOut,
    MonthlyStatementOut,
    MovementOut,
    UsageLineOut,
)
from tesai.db import SessionDep

router = APIRouter(tags=["billing"])

_CUSTOMER_KINDS = (AccountKind.CUSTOMER_AVAILABLE, AccountKind.CUSTOMER_HELD)
_PROVIDER_KINDS = (AccountKind.PROVIDER_EARNINGS, AccountKind.PROVIDER_PENDING_PAYOUT)


@router.get("/customer/balance")
async def customer_balance(user: CustomerUser, session: SessionDep) -> BalanceOut:
    """Available funds and what is held for running clusters."""
    b = await statements.balances(session, user.id)
    return BalanceOut(available_micro=b.available_micro, held_micro=b.held_micro, holds=b.holds)


@router.get("/customer/ledger", response_model=list[LedgerLineOut])
async def customer_ledger(
    user: CustomerUser,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Every posting on the customer's accounts, newest first (JSON or CSV)."""
    lines = await statements.ledger_history(
        session, user.id, kinds=_CUSTOMER_KINDS, before_id=before_id, limit=limit
    )
    if format == "csv":
        return PlainTextResponse(statements.ledger_csv(lines), media_type="text/csv")
    return JSONResponse(
        [
            LedgerLineOut.model_validate(line, from_attributes=True).model_dump(mode="json")
            for line in lines
        ]
    )


@router.get("/customer/usage", response_model=list[UsageLineOut])
async def customer_usage(
    user: CustomerUser,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response:
    """Metered seconds, price and amount per cluster node."""
    holds = await statements.account_ids(session, user.id, AccountKind.CUSTOMER_HELD)
    lines = await statements.usage_by_node(session, hold_account_ids=holds)
    return _usage_response(lines, format)


@router.get("/customer/invoices")
async def customer_invoices(user: CustomerUser, session: SessionDep) -> list[MonthlyStatementOut]:
    """Monthly statements: deposits, grants, usage charged, unused holds returned."""
    return [
        MonthlyStatementOut.model_validate(m, from_attributes=True)
        for m in await statements.monthly_statements(session, user.id)
    ]


@router.get("/provider/usage", response_model=list[UsageLineOut])
async def provider_usage(
    user: ProviderUser,
    session: SessionDep,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Response:
    """What each of the provider's devices earned, per cluster node."""
    accounts = await statements.account_ids(session, user.id, AccountKind.PROVIDER_EARNINGS)
    lines = await statements.usage_by_node(session, earnings_account_ids=accounts)
    return _usage_response(lines, format)


def _usage_response(lines: list[statements.UsageLine], format: str) -> Response:
    rows = [UsageLineOut.model_validate(line, from_attributes=True) for line in lines]
    if format == "csv":
        header = ",".join(UsageLineOut.model_fields)
        body = "\n".join(",".join(str(v) for v in r.model_dump().values()) for r in rows)
        return PlainTextResponse(
            f"{header}\n{body}\n" if rows else f"{header}\n", media_type="text/csv"
        )
    return JSONResponse([r.model_dump(mode="json") for r in rows])


@router.get("/provider/earnings")
async def provider_earnings(user: ProviderUser, session: SessionDep) -> EarningsOut:
    """Earnings available to withdraw, in flight, and paid out so far."""
    b = await statements.balances(session, user.id)
    pending = await statements.account_ids(session, user.id, AccountKind.PROVIDER_PENDING_PAYOUT)
    paid = await session.scalar(
        select(func.coalesce(func.sum(-LedgerPosting.amount), 0))
        .join(LedgerTransaction, LedgerTransaction.id == LedgerPosting.transaction_id)
        .where(LedgerPosting.account_id.in_(pending), LedgerTransaction.kind == "payout_complete")
    )
    return EarningsOut(
        earnings_micro=b.earnings_micro,
        pending_payout_micro=b.pending_payout_micro,
        paid_out_micro=int(paid or 0),
    )


@router.post("/internal/credits", status_code=201)
async def grant_credit(
    body: GrantIn,
    admin: AdminUser,
    session: SessionDep,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> MovementOut:
    """Grant credit to a user (promotion, private deployment); audited."""

    async def run() -> MovementOut:
        movement = await service.admin_grant_credit(
            session,
            admin_user_id=admin.id,
            user_id=body.user_id,
            amount_micro=body.amount_micro,
            reason=body.reason,
            idempotency_key=f"grant:{admin.id}:{idempotency_key}",
        )
        return MovementOut(
            transaction_id=movement.transaction_id,
            kind=movement.kind,
            amount_micro=body.amount_micro,
        )

    _, answer = await run_once(
        session,
        user_id=admin.id,
        route="POST /internal/credits",
        key=idempotency_key,
        params=body.model_dump(mode="json"),
        run=run,
        status_code=201,
    )
    del request
    return MovementOut.model_validate(answer)

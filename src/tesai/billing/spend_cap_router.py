"""The customer's monthly spend cap (see ``tesai.billing.guardrails``).

- ``GET    /customer/spend-cap``   the cap, month-to-date spend and open holds
- ``PUT    /customer/spend-cap``   ``{"monthly_cap_micro": 50000000}`` sets it, ``null`` clears it
- ``DELETE /customer/spend-cap``   clears it
"""

from __future__ import annotations

from fastapi import APIRouter

from tesai.auth.deps import CustomerUser, RuntimeDep
from tesai.billing import guardrails
from tesai.billing.schemas import SpendCapIn, SpendCapOut
from tesai.db import SessionDep

router = APIRouter(prefix="/customer/spend-cap", tags=["billing"])


def _out(status: guardrails.CapStatus) -> SpendCapOut:
    return SpendCapOut(
        monthly_cap_micro=status.monthly_cap_micro,
        period=status.period,
        period_start=status.period_start,
        period_end=status.period_end,
        month_to_date_micro=status.month_to_date_micro,
        open_holds_micro=status.open_holds_micro,
        used_pct=status.used_pct,
    )


@router.get("")
async def get_spend_cap(
    user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> SpendCapOut:
    """Your monthly spend cap and what counts against it this month."""
    return _out(await guardrails.cap_status(session, runtime.settings, user.id))


@router.put("")
async def set_spend_cap(
    body: SpendCapIn, user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> SpendCapOut:
    """Set the monthly spend cap (null clears it). Clusters are stopped once spend reaches
    it; creating or extending one whose hold would pass it is refused (409)."""
    return _out(
        await guardrails.set_cap(session, runtime.settings, user.id, body.monthly_cap_micro)
    )


@router.delete("")
async def clear_spend_cap(
    user: CustomerUser, session: SessionDep, runtime: RuntimeDep
) -> SpendCapOut:
    """Remove the monthly spend cap."""
    return _out(await guardrails.set_cap(session, runtime.settings, user.id, None))

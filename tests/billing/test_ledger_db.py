"""The database itself keeps the ledger sound, whatever the Python code does."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tesai.billing import service
from tesai.billing.errors import IdempotencyKeyReused, InsufficientFunds
from tesai.billing.ledger import balance_of
from tesai.billing.models import IdempotencyRecord
from tesai.billing.tasks import cleanup_idempotency
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.billing.conftest import NewUser


async def _two_accounts(runtime: Runtime, new_user: NewUser) -> tuple[int, int]:
    user = await new_user()
    async with runtime.sessionmaker() as s, s.begin():
        await service.admin_grant_credit(
            s, admin_user_id=None, user_id=user, amount_micro=100, reason="t", idempotency_key="g1"
        )
    async with runtime.sessionmaker() as s:
        rows = (await s.execute(text("SELECT id, kind FROM ledger_accounts ORDER BY kind"))).all()
    ids = {r.kind: r.id for r in rows}
    return ids["customer_available"], ids["platform_credits"]


async def test_unbalanced_transaction_fails_at_commit(runtime: Runtime, new_user: NewUser) -> None:
    avail, _credits = await _two_accounts(runtime, new_user)
    async with runtime.sessionmaker() as s:
        tx = await s.scalar(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)"
                " VALUES ('x', 'raw-1', '', '', '{}') RETURNING id"
            )
        )
        await s.execute(
            text(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount)"
                " VALUES (:t, :a, 5)"
            ),
            {"t": tx, "a": avail},
        )
        # The insert itself succeeds (the check is deferred) ...
        with pytest.raises(DBAPIError, match="does not balance"):
            await s.commit()  # ... the commit does not.
    async with runtime.sessionmaker() as s:
        assert (
            await s.scalar(text("SELECT balance FROM ledger_accounts WHERE id = :a"), {"a": avail})
            == 100
        )


async def test_balanced_raw_transaction_commits(runtime: Runtime, new_user: NewUser) -> None:
    avail, credits = await _two_accounts(runtime, new_user)
    async with runtime.sessionmaker() as s, s.begin():
        tx = await s.scalar(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)"
                " VALUES ('x', 'raw-2', '', '', '{}') RETURNING id"
            )
        )
        await s.execute(
            text(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount)"
                " VALUES (:t, :a, -30), (:t, :c, 30)"
            ),
            {"t": tx, "a": avail, "c": credits},
        )
    async with runtime.sessionmaker() as s:
        assert (
            await s.scalar(text("SELECT balance FROM ledger_accounts WHERE id = :a"), {"a": avail})
            == 70
        )


async def test_negative_balance_is_rejected(runtime: Runtime, new_user: NewUser) -> None:
    avail, credits = await _two_accounts(runtime, new_user)
    async with runtime.sessionmaker() as s:
        tx = await s.scalar(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)"
                " VALUES ('x', 'raw-3', '', '', '{}') RETURNING id"
            )
        )
        with pytest.raises(DBAPIError, match="non_negative"):
            await s.execute(
                text(
                    "INSERT INTO ledger_postings (transaction_id, account_id, amount)"
                    " VALUES (:t, :a, -101), (:t, :c, 101)"
                ),
                {"t": tx, "a": avail, "c": credits},
            )
        await s.rollback()


async def test_postings_are_append_only(runtime: Runtime, new_user: NewUser) -> None:
    await _two_accounts(runtime, new_user)
    for sql in (
        "UPDATE ledger_postings SET amount = amount + 1",
        "DELETE FROM ledger_postings",
        "UPDATE ledger_transactions SET memo = 'x'",
        "UPDATE ledger_accounts SET balance = 1000000",
    ):
        async with runtime.sessionmaker() as s:
            with pytest.raises(DBAPIError):
                await s.execute(text(sql))
            await s.rollback()


async def test_postings_cannot_be_added_to_an_old_transaction(
    runtime: Runtime, new_user: NewUser
) -> None:
    avail, credits = await _two_accounts(runtime, new_user)
    async with runtime.sessionmaker() as s:
        tx = await s.scalar(text("SELECT id FROM ledger_transactions LIMIT 1"))
        with pytest.raises(DBAPIError, match="own ledger transaction"):
            await s.execute(
                text(
                    "INSERT INTO ledger_postings (transaction_id, account_id, amount)"
                    " VALUES (:t, :a, -1), (:t, :c, 1)"
                ),
                {"t": tx, "a": avail, "c": credits},
            )
        await s.rollback()


async def test_hold_settle_release_and_idempotency(runtime: Runtime, new_user: NewUser) -> None:
    customer, provider = await new_user(), await new_user(("provider",))
    async with runtime.sessionmaker() as s, s.begin():
        await service.credit_deposit(
            s, user_id=customer, amount_micro=1_000_000, signature="sig1", idempotency_key="d1"
        )
        hold = await service.place_hold(
            s, user_id=customer, amount_micro=600_000, ref="cluster:1", idempotency_key="h1"
        )
        again = await service.place_hold(
            s, user_id=customer, amount_micro=600_000, ref="cluster:1", idempotency_key="h1"
        )
        assert again.replayed
        assert again.transaction_id == hold.transaction_id
        with pytest.raises(IdempotencyKeyReused):
            await service.place_hold(
                s, user_id=customer, amount_micro=1, ref="cluster:1", idempotency_key="h1"
            )
        with pytest.raises(InsufficientFunds):
            await service.place_hold(
                s, user_id=customer, amount_micro=400_001, ref="cluster:2", idempotency_key="h2"
            )
        settled = await service.settle_usage(
            s,
            user_id=customer,
            ref="cluster:1",
            provider_user_id=provider,
            provider_amount_micro=100_000,
            fee_bps=1000,
            idempotency_key="s1",
        )
        assert settled.result == {
            "provider": 100_000,
            "fee": 10_000,
            "charged": 110_000,
            "exhausted": False,
        }
        released = await service.release_hold(
            s, user_id=customer, ref="cluster:1", idempotency_key="r1"
        )
        assert released.result == {"amount": 490_000}
    async with runtime.sessionmaker() as s:
        rows = dict(
            (await s.execute(text("SELECT kind || ':' || ref, balance FROM ledger_accounts"))).all()
        )
        assert rows["customer_available:"] == 890_000
        assert rows["customer_held:cluster:1"] == 0
        assert rows["provider_earnings:"] == 100_000
        assert rows["platform_fees:"] == 10_000
        assert rows["platform_treasury:"] == -1_000_000
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0
        n = await s.scalar(text("SELECT count(*) FROM audit_events WHERE action LIKE 'money.%'"))
        assert n == 4


async def test_batched_settlement_matches_one_by_one(runtime: Runtime, new_user: NewUser) -> None:
    customer, provider = await new_user(), await new_user(("provider",))
    async with runtime.sessionmaker() as s, s.begin():
        await service.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=1000,
            reason="t",
            idempotency_key="g",
        )
        await service.place_hold(
            s, user_id=customer, amount_micro=1000, ref="c", idempotency_key="h"
        )
    charges = [service.UsageCharge(customer, "c", provider, 300, f"u{i}") for i in range(4)]
    async with runtime.sessionmaker() as s, s.begin():
        results = await service.settle_usage_many(s, charges, fee_bps=1000)
    amounts = [r.result["charged"] for r in results if isinstance(r, service.Movement)]
    # 330 + 330 + 330, then the last charge is capped to the 10 left: the hold is empty.
    assert amounts == [330, 330, 330, 10]
    async with runtime.sessionmaker() as s, s.begin():
        again = await service.settle_usage_many(s, charges, fee_bps=1000)
    assert all(isinstance(r, service.Movement) and r.replayed for r in again)
    async with runtime.sessionmaker() as s:
        assert await s.scalar(text("SELECT sum(amount) FROM ledger_postings")) == 0
        audits = await s.scalar(
            text("SELECT count(*) FROM audit_events WHERE action = 'money.usage_settled'")
        )
        assert audits == 4


async def test_old_idempotency_answers_are_deleted(runtime: Runtime) -> None:
    async with runtime.sessionmaker() as s, s.begin():
        for key, age_days in (("old", 8), ("young", 6)):
            s.add(
                IdempotencyRecord(
                    scope="u:POST /x",
                    key=key,
                    request_hash="h",
                    status_code=201,
                    response={},
                    created_at=utcnow() - timedelta(days=age_days),
                )
            )
    assert await cleanup_idempotency(runtime.task_context) == {"deleted": 1}
    async with runtime.sessionmaker() as s:
        keys = (await s.execute(text("SELECT key FROM idempotency_records"))).scalars().all()
    assert keys == ["young"]


async def test_concurrent_twins_with_one_key_move_money_once(
    runtime: Runtime, new_user: NewUser
) -> None:
    customer = await new_user()
    async with runtime.sessionmaker() as s, s.begin():
        await service.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=100,
            reason="t",
            idempotency_key="g",
        )

    async def hold() -> int:
        async with runtime.sessionmaker() as s, s.begin():
            m = await service.place_hold(
                s, user_id=customer, amount_micro=60, ref="c", idempotency_key="twin"
            )
            return m.transaction_id

    first, second = await asyncio.gather(hold(), hold())
    assert first == second
    async with runtime.sessionmaker() as s:
        assert await balance_of(s, service.available(customer)) == 40

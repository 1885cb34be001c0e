"""The request is the unit of work: it commits before the response leaves, so a change the
database refuses at commit is an error to the client, never a success that did not happen."""

from __future__ import annotations

import httpx
from fastapi import APIRouter
from sqlalchemy import func, select, text

from tesai.app import create_app
from tesai.billing.ledger import account_id
from tesai.billing.models import LedgerTransaction
from tesai.billing.service import TREASURY
from tesai.db import SessionDep
from tesai.runtime import Runtime
from tesai.settings import Settings


async def test_a_commit_the_database_refuses_is_an_error_not_a_success(
    settings: Settings, runtime: Runtime
) -> None:
    router = APIRouter()

    @router.post("/test/unbalanced")
    async def unbalanced(session: SessionDep) -> dict[str, str]:
        # One leg only: the deferred balance trigger refuses it at COMMIT, not at flush.
        account = await account_id(session, TREASURY)
        tx = await session.scalar(
            text(
                "INSERT INTO ledger_transactions (kind, idempotency_key, request_hash, memo, refs)"
                " VALUES ('test', 'uow-test', '', '', '{}') RETURNING id"
            )
        )
        await session.execute(
            text(
                "INSERT INTO ledger_postings (transaction_id, account_id, amount)"
                " VALUES (:t, :a, 5)"
            ),
            {"t": tx, "a": account},
        )
        return {"status": "ok"}

    app = create_app(settings, runtime=runtime)
    app.include_router(router)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/test/unbalanced")
    assert r.status_code >= 500
    assert r.headers["content-type"] == "application/problem+json"
    async with runtime.sessionmaker() as s:
        count = await s.scalar(
            select(func.count())
            .select_from(LedgerTransaction)
            .where(LedgerTransaction.idempotency_key == "uow-test")
        )
    assert count == 0

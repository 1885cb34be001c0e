"""Idempotent money POSTs: the ``Idempotency-Key`` header and the stored first answer.

A request with a key runs once; a retry with the same key and body gets the stored answer
(same status and JSON), the same key with another body gets 409. The answer is stored in
the request's own unit of work, so a request that fails stores nothing and may be retried.
Answers are kept ``idempotency_retention_days`` (``billing.cleanup_idempotency``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header
from fastapi.encoders import jsonable_encoder
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing.errors import IdempotencyKeyRequired, IdempotencyKeyReused
from tesai.billing.models import IdempotencyRecord
from tesai.billing.money import request_hash

MAX_KEY_LENGTH = 200


def check_key(value: str | None) -> str:
    """The key from the header; raises ``IdempotencyKeyRequired`` (400) when absent or bad."""
    key = (value or "").strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise IdempotencyKeyRequired(
            f"Money requests need an Idempotency-Key header (1–{MAX_KEY_LENGTH} printable chars)"
        )
    return key


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Unique per intended operation; a retry with the same key is answered once.",
    ),
]


async def run_once(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    route: str,
    key: str | None,
    params: dict[str, Any],
    run: Callable[[], Awaitable[Any]],
    status_code: int = 200,
) -> tuple[int, Any]:
    """Answer a money POST at most once per (user, route, key); returns (status, JSON body)."""
    key = check_key(key)
    scope = f"{user_id}:{route}"[:100]
    digest = request_hash(**params)
    found = await session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.key == key
        )
    )
    if found is not None:
        if found.request_hash != digest:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different request", key=key
            )
        return found.status_code, found.response
    body = jsonable_encoder(await run())
    await session.execute(
        insert(IdempotencyRecord)
        .values(scope=scope, key=key, request_hash=digest, status_code=status_code, response=body)
        .on_conflict_do_nothing()
    )
    return status_code, body

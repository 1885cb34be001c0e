"""Idempotent money POSTs: the ``Idempotency-Key`` header and the stored first answer.

A request with a key runs once; a retry with the same key and body gets the stored answer
(same status and JSON), the same key with another body gets 409. Answers are kept
``idempotency_retention_days`` (``billing.cleanup_idempotency``).

The key is claimed before the request does anything: its row is written first, in the
request's own transaction, with the answer filled in before that transaction commits. So
the money a request moves and its answer commit together (a crash in between leaves
neither, and the retry runs once), a request that fails stores nothing and may be retried,
and a concurrent duplicate waits on the row until the first one ends, then gets its answer
(or runs, if the first one failed).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from fastapi.encoders import jsonable_encoder
from sqlalchemy import delete, select, tuple_, update
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


RESERVED = 0
"""``status_code`` of a key claimed by a transaction that has not answered yet (never
committed: the claiming transaction answers or releases the key before it commits)."""


@dataclass(frozen=True)
class IdempotentCall:
    """One request's key: who used it and where (``scope``), the key, its body's digest."""

    scope: str
    key: str
    request_hash: str


@dataclass(frozen=True)
class Answer:
    """The first answer given under a key, replayed to every retry."""

    status_code: int
    body: Any


def idempotent_call(
    *,
    user_id: uuid.UUID,
    route: str,
    key: str | None,
    params: dict[str, Any],
    required: bool = True,
) -> IdempotentCall | None:
    """The request's call; None without a key when it is not ``required``.

    Raises ``IdempotencyKeyRequired`` (400) for a missing required key or a bad one.
    """
    if key is None and not required:
        return None
    return IdempotentCall(f"{user_id}:{route}"[:100], check_key(key), request_hash(**params))


def _ids(calls: Sequence[IdempotentCall]) -> Any:
    pairs = [(c.scope, c.key) for c in calls]
    return tuple_(IdempotencyRecord.scope, IdempotencyRecord.key).in_(pairs)


async def claim(
    session: AsyncSession, calls: Sequence[IdempotentCall]
) -> list[Answer | IdempotencyKeyReused | None]:
    """Claim the calls' keys for this transaction, or find the answers already given.

    Per call: None when the key is now this transaction's (run the request, then ``answer``
    or ``release`` it in the same transaction); the first ``Answer`` for a retry with the
    same body; ``IdempotencyKeyReused`` for the key used with another body. A key claimed
    by a transaction still running is waited for. Keys are claimed in sorted order, so
    transactions claiming overlapping keys never deadlock. Raises ``ValueError`` for a key
    given twice (the caller runs one of them first).
    """
    if not calls:
        return []
    if len({(c.scope, c.key) for c in calls}) != len(calls):
        raise ValueError("one idempotency key twice in one claim")
    ordered = sorted(calls, key=lambda c: (c.scope, c.key))
    claimed = set(
        (
            await session.execute(
                insert(IdempotencyRecord)
                .values(
                    [
                        {
                            "scope": c.scope,
                            "key": c.key,
                            "request_hash": c.request_hash,
                            "status_code": RESERVED,
                            "response": {},
                        }
                        for c in ordered
                    ]
                )
                .on_conflict_do_nothing()
                .returning(IdempotencyRecord.scope, IdempotencyRecord.key)
            )
        ).tuples()
    )
    taken = [c for c in calls if (c.scope, c.key) not in claimed]
    found = {
        (r.scope, r.key): r
        for r in (
            await session.scalars(select(IdempotencyRecord).where(_ids(taken))) if taken else []
        )
    }
    out: list[Answer | IdempotencyKeyReused | None] = []
    for c in calls:
        record = found.get((c.scope, c.key))
        if (c.scope, c.key) in claimed:
            out.append(None)
        elif record is None or record.status_code == RESERVED:
            # Gone again (cleaned up) or never answered: cannot happen to a committed claim.
            raise RuntimeError(f"idempotency key {c.key!r} neither claimed nor answered")
        elif record.request_hash != c.request_hash:
            out.append(
                IdempotencyKeyReused(
                    "This Idempotency-Key was already used with a different request", key=c.key
                )
            )
        else:
            out.append(Answer(record.status_code, record.response))
    return out


async def answer(
    session: AsyncSession, call: IdempotentCall, status_code: int, body: Any
) -> Answer:
    """Store the answer to a key this transaction claimed; returns it as stored (JSON)."""
    stored = Answer(status_code, jsonable_encoder(body))
    await session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.scope == call.scope, IdempotencyRecord.key == call.key)
        .values(status_code=stored.status_code, response=stored.body)
    )
    return stored


async def release(session: AsyncSession, calls: Sequence[IdempotentCall]) -> None:
    """Give up keys this transaction claimed (their requests failed but the transaction
    commits others): a retry runs again."""
    if calls:
        await session.execute(delete(IdempotencyRecord).where(_ids(calls)))


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
    """Answer a money POST at most once per (user, route, key); returns (status, JSON body).

    The key is claimed first (see the module docstring); ``run`` raising leaves the request
    to roll back, the claim with it.
    """
    call = idempotent_call(user_id=user_id, route=route, key=key, params=params)
    assert call is not None
    [found] = await claim(session, [call])
    if isinstance(found, IdempotencyKeyReused):
        raise found
    if found is None:
        found = await answer(session, call, status_code, await run())
    return found.status_code, found.body

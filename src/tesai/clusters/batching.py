"""Group commit of cluster creation within one API process.

The ``POST /clusters`` requests a process receives at once are created together by
``service.create_clusters``: one transaction and a fixed number of statements for the whole
batch, so the cost of a commit and of each statement is shared. While one batch runs, the
requests that arrive queue up and form the next (at most ``max_batch``); a request that finds
nothing running starts at once, so a quiet process answers as fast as before.

Each request still gets its own answer: its cluster, or its own error (no capacity,
insufficient funds, over the spend cap), decided exactly as one by one in arrival order. A
request whose chosen devices kept being taken by other processes' bookings (``PoolChanged``)
goes to the front of the next batch, ``BATCHES_PER_REQUEST`` batches at most, instead of
answering 409 at once: under load, the API processes all want the best free devices at the
same moment. If the batch's transaction fails as a whole (a database error, a lost race the
checks could not see), every request in it is retried alone through
``service.create_cluster``; a commit that fails on the way back is first checked (a
committed batch is never booked twice). Requests naming a quote run alone: they wait on
their quoted devices' rows.

A request with an ``Idempotency-Key`` claims its key in the transaction that books it, and
its answer is stored there too (``tesai.billing.idempotency``): a retry gets the first
cluster, whether it comes while the first request is still in a batch (of this process or
another: it waits on the key) or after a commit whose answer was lost. Two requests of one
batch never carry the same key: the later one waits for the next batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import idempotency
from tesai.billing.idempotency import Answer, IdempotentCall
from tesai.clusters import service
from tesai.clusters.errors import PoolChanged
from tesai.clusters.models import Cluster
from tesai.clusters.schemas import CreateCluster
from tesai.db import run_after_commit
from tesai.errors import ServiceUnavailable
from tesai.observability.business import CREATE_BATCH_SIZE
from tesai.runtime import Runtime

log = structlog.get_logger(__name__)

MAX_BATCH = 256
BATCHES_PER_REQUEST = 3
BATCHER_KEY = "clusters.create_batcher"


class CommitUnknown(ServiceUnavailable):
    """The batch's commit failed and whether it happened could not be checked."""

    code = "commit_unknown"


@dataclass(frozen=True)
class Once:
    """A creation under an ``Idempotency-Key``: the call, and the answer a cluster makes."""

    call: IdempotentCall
    render: Callable[[Cluster], Any]
    status_code: int = 201


@dataclass
class Waiting:
    item: service.NewCluster
    future: asyncio.Future[Cluster | Answer]
    once: Once | None = None
    batches: int = 0

    @property
    def key(self) -> tuple[str, str] | None:
        return None if self.once is None else (self.once.call.scope, self.once.call.key)


class CreateBatcher:
    """Queues cluster creations and runs them as batches, one batch at a time."""

    def __init__(self, runtime: Runtime, max_batch: int = MAX_BATCH) -> None:
        self.runtime = runtime
        self.max_batch = max_batch
        self._queue: list[Waiting] = []
        self._worker: asyncio.Task[None] | None = None

    async def create(self, customer_id: uuid.UUID, body: CreateCluster) -> Cluster:
        """Create one cluster (with whatever else is queued); raises its ``AppError``.

        A request that goes away once its batch has started may still get its cluster (as a
        request whose answer is lost after the commit); one that goes away while it waits
        is left out of the batches."""
        result = await self._queued(Waiting(service.NewCluster(customer_id, body), self._future()))
        assert isinstance(result, Cluster)
        return result

    async def create_once(
        self, customer_id: uuid.UUID, body: CreateCluster, once: Once
    ) -> Cluster | Answer:
        """``create`` under an ``Idempotency-Key``: the new cluster, or the answer stored for
        the key by an earlier request with the same body. Raises its ``AppError``
        (``IdempotencyKeyReused`` for the key used with another body)."""
        return await self._queued(
            Waiting(service.NewCluster(customer_id, body), self._future(), once)
        )

    @staticmethod
    def _future() -> asyncio.Future[Cluster | Answer]:
        return asyncio.get_running_loop().create_future()

    async def _queued(self, waiting: Waiting) -> Cluster | Answer:
        self._queue.append(waiting)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="clusters.create_batcher")
        return await waiting.future

    def _next_batch(self) -> list[Waiting]:
        """The next batch, in arrival order; a request whose key is already in it waits."""
        batch: list[Waiting] = []
        rest: list[Waiting] = []
        keys: set[tuple[str, str]] = set()
        for w in self._queue:
            if w.future.done():
                continue
            key = w.key
            if len(batch) < self.max_batch and (key is None or key not in keys):
                batch.append(w)
                if key is not None:
                    keys.add(key)
            else:
                rest.append(w)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        batch: list[Waiting] = []
        try:
            while self._queue:
                batch = self._next_batch()
                if batch:
                    self._queue[:0] = await self._run(batch)
        except BaseException as exc:  # never leave a request waiting for a dead worker
            for w in [*batch, *self._queue]:
                if not w.future.done():
                    w.future.set_exception(
                        RuntimeError("cluster creation stopped; try again")
                        if isinstance(exc, asyncio.CancelledError)
                        else exc
                    )
            self._queue = []
            raise

    async def _run(self, batch: list[Waiting]) -> list[Waiting]:
        """Book one batch and answer its requests; returns those to try in the next one."""
        CREATE_BATCH_SIZE.observe(len(batch))
        # A request naming a quote waits on its quoted devices' rows: alone, so it never
        # waits while holding the locks of other requests.
        alone = [w for w in batch if w.item.body.quote_id is not None]
        together = [w for w in batch if w.item.body.quote_id is None]
        results: dict[int, Any] = {}
        if together:
            try:
                answers = await self._together(together)
            except CommitUnknown as exc:  # never retried: it may have booked
                results.update((id(w), exc) for w in together)
            except Exception:  # the whole batch rolled back: each alone, its own answer
                alone = batch
            else:
                results.update((id(w), r) for w, r in zip(together, answers, strict=True))
        for w in alone:
            results[id(w)] = await self._alone(w)
        again: list[Waiting] = []
        for w in batch:
            w.batches += 1
            result = results[id(w)]
            if w.future.done():  # the request went away; its cluster stands
                continue
            if isinstance(result, PoolChanged) and w.batches < BATCHES_PER_REQUEST:
                again.append(w)
            elif isinstance(result, BaseException):
                w.future.set_exception(result)
            else:
                w.future.set_result(result)
        return again

    async def _together(self, batch: list[Waiting]) -> list[Any]:
        """``create_clusters`` in one transaction. Raises only when nothing was committed."""
        async with self.runtime.sessionmaker() as session:
            results = await self._book(session, batch)
            try:
                await session.commit()
            except Exception as exc:
                # The commit may have happened even so (a connection lost on the way back):
                # the batch's clusters tell. Retrying a committed batch would book twice.
                try:
                    committed = await self._committed(results)
                except Exception as check:
                    raise CommitUnknown(
                        "Cluster creation could not confirm its commit; list your clusters"
                        " before trying again"
                    ) from check
                if not committed:
                    service.give_back_holds(session, self.runtime)
                    raise
                log.warning("clusters.batch_commit_confirmed_after_error", error=repr(exc))
            try:
                await run_after_commit(session)
            except Exception:  # committed: the answers stand
                log.exception("clusters.batch_after_commit_failed")
        return results

    async def _book(self, session: AsyncSession, batch: list[Waiting]) -> list[Any]:
        """Claim the batch's keys, book the requests whose key was free (or that have none)
        with ``create_clusters``, store each booked answer and give the failed requests'
        keys back, in ``session``'s transaction; returns each request's result (a cluster,
        a stored ``Answer`` or an ``AppError``)."""
        keyed = [w for w in batch if w.once is not None]
        claims = await idempotency.claim(session, [w.once.call for w in keyed if w.once])
        results: dict[int, Any] = {
            id(w): found for w, found in zip(keyed, claims, strict=True) if found is not None
        }
        todo = [w for w in batch if id(w) not in results]
        booked = (
            await service.create_clusters(session, self.runtime, [w.item for w in todo])
            if todo
            else []
        )
        failed: list[IdempotentCall] = []
        for w, result in zip(todo, booked, strict=True):
            results[id(w)] = result
            if w.once is None:
                continue
            if isinstance(result, Cluster):
                await idempotency.answer(
                    session, w.once.call, w.once.status_code, w.once.render(result)
                )
            else:
                failed.append(w.once.call)
        await idempotency.release(session, failed)
        return [results[id(w)] for w in batch]

    async def _committed(self, results: list[Any]) -> bool:
        booked = [r.id for r in results if isinstance(r, Cluster)]
        if not booked:
            return False
        async with self.runtime.sessionmaker() as session:
            found = await session.scalar(
                select(func.count()).select_from(Cluster).where(Cluster.id.in_(booked))
            )
        return bool(found)

    async def _alone(self, w: Waiting) -> Any:
        try:
            async with self.runtime.sessionmaker() as session:
                if w.once is not None:
                    [found] = await idempotency.claim(session, [w.once.call])
                    if found is not None:
                        return found
                cluster = await service.create_cluster(
                    session, self.runtime, w.item.customer_id, w.item.body
                )
                if w.once is not None:
                    await idempotency.answer(
                        session, w.once.call, w.once.status_code, w.once.render(cluster)
                    )
                await session.commit()
                await run_after_commit(session)
                return cluster
        except Exception as exc:
            return exc


def create_batcher(runtime: Runtime) -> CreateBatcher:
    """The process's ``CreateBatcher`` (kept in ``Runtime.state``)."""
    batcher = runtime.state.get(BATCHER_KEY)
    if not isinstance(batcher, CreateBatcher):
        batcher = runtime.state[BATCHER_KEY] = CreateBatcher(runtime)
    return batcher

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
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import func, select

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


@dataclass
class Waiting:
    item: service.NewCluster
    future: asyncio.Future[Cluster]
    batches: int = 0


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
        future: asyncio.Future[Cluster] = asyncio.get_running_loop().create_future()
        self._queue.append(Waiting(service.NewCluster(customer_id, body), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="clusters.create_batcher")
        return await future

    async def _drain(self) -> None:
        batch: list[Waiting] = []
        try:
            while self._queue:
                waiting = [w for w in self._queue if not w.future.done()]
                batch, self._queue = waiting[: self.max_batch], waiting[self.max_batch :]
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
                answers = await self._together([w.item for w in together])
            except CommitUnknown as exc:  # never retried: it may have booked
                results.update((id(w), exc) for w in together)
            except Exception:  # the whole batch rolled back: each alone, its own answer
                alone = batch
            else:
                results.update((id(w), r) for w, r in zip(together, answers, strict=True))
        for w in alone:
            results[id(w)] = await self._alone(w.item)
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

    async def _together(self, items: list[service.NewCluster]) -> list[Any]:
        """``create_clusters`` in one transaction. Raises only when nothing was committed."""
        async with self.runtime.sessionmaker() as session:
            results = await service.create_clusters(session, self.runtime, items)
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

    async def _committed(self, results: list[Any]) -> bool:
        booked = [r.id for r in results if isinstance(r, Cluster)]
        if not booked:
            return False
        async with self.runtime.sessionmaker() as session:
            found = await session.scalar(
                select(func.count()).select_from(Cluster).where(Cluster.id.in_(booked))
            )
        return bool(found)

    async def _alone(self, item: service.NewCluster) -> Any:
        try:
            async with self.runtime.sessionmaker() as session:
                cluster = await service.create_cluster(
                    session, self.runtime, item.customer_id, item.body
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

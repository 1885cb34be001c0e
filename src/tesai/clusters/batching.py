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
``service.create_cluster``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from tesai.clusters import service
from tesai.clusters.errors import PoolChanged
from tesai.clusters.models import Cluster
from tesai.clusters.pool import pool_cache
from tesai.clusters.schemas import CreateCluster
from tesai.db import run_after_commit
from tesai.observability.business import CREATE_BATCH_SIZE
from tesai.runtime import Runtime

MAX_BATCH = 256
BATCHES_PER_REQUEST = 3
BATCHER_KEY = "clusters.create_batcher"


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
        """Create one cluster (with whatever else is queued); raises its ``AppError``."""
        future: asyncio.Future[Cluster] = asyncio.get_running_loop().create_future()
        self._queue.append(Waiting(service.NewCluster(customer_id, body), future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain(), name="clusters.create_batcher")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            CREATE_BATCH_SIZE.observe(len(batch))
            items = [w.item for w in batch]
            try:
                results: list[Any] = await self._together(items)
            except Exception:  # the whole batch rolled back: each alone, its own answer
                results = [await self._alone(item) for item in items]
            again: list[Waiting] = []
            for waiting, result in zip(batch, results, strict=True):
                waiting.batches += 1
                if waiting.future.done():  # the request went away; its cluster stands
                    continue
                if isinstance(result, PoolChanged) and waiting.batches < BATCHES_PER_REQUEST:
                    again.append(waiting)
                elif isinstance(result, BaseException):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)
            self._queue[:0] = again

    async def _together(self, items: list[service.NewCluster]) -> list[Any]:
        async with self.runtime.sessionmaker() as session:
            results = await service.create_clusters(session, self.runtime, items)
            await session.commit()
            await run_after_commit(session)
        return results

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
    """The process's ``CreateBatcher`` (kept in ``Runtime.state`` beside its pool index)."""
    batcher = runtime.state.get(BATCHER_KEY)
    if not isinstance(batcher, CreateBatcher):
        pool_cache(runtime.state)
        batcher = runtime.state[BATCHER_KEY] = CreateBatcher(runtime)
    return batcher

"""A cluster's jobs as the customer sees them: ours merged with what the head's Ray knows.

Jobs submitted through TES AI (CLI, console, jobs API) have a row of ours; jobs submitted
with Ray's own tooling through the proxy (``ray job submit``, the Job SDK) or drivers started
on the cluster live only in Ray. ``merge`` lists both, ours first by identity
(``submission_id``), each marked by how it was submitted; the control plane's own canary jobs
(``tesai.clusters.canary``) are never the customer's and never listed. Pure: the caller reads
our rows and Ray's ``GET /api/jobs/`` (``ray_api.list_jobs``), either of which may be missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tesai.clusters.canary import SUBMISSION_PREFIX as CANARY_PREFIX
from tesai.clusters.models import Job, JobStatus
from tesai.clusters.schemas import JobListItem

TERMINAL = frozenset({JobStatus.stopped.value, JobStatus.succeeded.value, JobStatus.failed.value})


def _instant(ms: Any) -> datetime | None:
    if isinstance(ms, int | float) and not isinstance(ms, bool) and ms > 0:
        return datetime.fromtimestamp(ms / 1000, UTC)
    return None


def _ray_id(row: Mapping[str, Any]) -> str | None:
    """The id Ray tools take for the job: its submission id, else (a bare driver) its job id."""
    value = row.get("submission_id") or row.get("job_id")
    return str(value) if value else None


def merge(
    cluster_id: uuid.UUID, ours: Sequence[Job], ray: Sequence[Mapping[str, Any]], now: datetime
) -> list[JobListItem]:
    """Every job, newest first: our rows (with Ray's current status while ours is not final)
    and the jobs only Ray knows (``submitted_via="ray"``, no ``id``)."""
    by_id = {
        i: row for row in ray if (i := _ray_id(row)) is not None and not i.startswith(CANARY_PREFIX)
    }
    items: list[JobListItem] = []
    for job in ours:
        live = by_id.pop(job.submission_id, None)
        status, message = job.status, job.message
        if live is not None and status not in TERMINAL and live.get("status"):
            status, message = str(live["status"]), live.get("message")
        items.append(
            JobListItem(
                id=job.id,
                cluster_id=job.cluster_id,
                submission_id=job.submission_id,
                entrypoint=job.entrypoint,
                status=status,
                message=message,
                submitted_via="tesai",
                max_retries=job.max_retries,
                attempts=job.attempts,
                created_at=job.created_at,
                finished_at=job.finished_at,
            )
        )
    for sid, row in by_id.items():
        status = str(row.get("status") or JobStatus.pending.value)
        items.append(
            JobListItem(
                id=None,
                cluster_id=cluster_id,
                submission_id=sid,
                entrypoint=str(row.get("entrypoint") or ""),
                status=status,
                message=row.get("message"),
                submitted_via="ray",
                max_retries=0,
                attempts=1,
                created_at=_instant(row.get("start_time")) or now,
                finished_at=_instant(row.get("end_time")),
            )
        )
    items.sort(key=lambda j: j.created_at, reverse=True)
    return items

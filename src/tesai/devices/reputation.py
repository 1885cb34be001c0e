"""Reputation follows evidence: what a failed check of the control plane's own does to a device.

An *offence* is such a check that a device failed: a proof of compute
(``tesai.devices.challenges``), a canary task (``tesai.clusters.canary``), or a caught lie — a
Ray node its agent reported running that the control plane did not find in its head's Ray
state, or found claiming what is not its own, or a head at an address the control plane
refuses to connect to (``tesai.clusters.reconcile``, ``tesai.clusters.evidence``). Each one
goes through ``record_offence``, which

- writes a ``DeviceEvent`` with the offence's reason code and a message the provider reads in
  the console and the CLI, moving the device to another status where the check says so (a
  failed proof: ``rejected``) and leaving it where it is otherwise (the event's from and to
  status are then the same: a rented device caught once keeps its cluster);
- lowers the device's reliability at once (``liveness.reliability_after_offences``), and again
  in every hourly recomputation for 30 days (``liveness.reliability_score``, counting the
  events);
- disables the device for an admin to review once ``offence_review_count`` offences of any
  kind fell within ``offence_review_window_s`` (``review_reason``): only an admin lifts it
  (``tesai.devices.service.ADMIN_ONLY_ENABLE``). A rented device leaves its cluster then,
  which replaces the node.

Offences are told apart from other events by their reason code (``OFFENCES``): the events are
the whole record, with no table of their own, and failed proofs recorded before offences had
other kinds count the same.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.devices.liveness import reliability_after_offences
from tesai.devices.models import Device, DeviceEvent, DeviceStatus
from tesai.devices.service import get_device, record_transition
from tesai.devices.states import event_message
from tesai.kit.time import utcnow
from tesai.observability.business import DEVICE_OFFENCES
from tesai.settings import Settings

PROOF_FAILURES: Final = frozenset(
    {
        "proof_replayed",
        "timing_implausible",
        "gpu_model_unknown",
        "vram_mismatch",
        "vram_alloc_failed",
        "proof_deadline_missed",
        "proof_commitment_mismatch",
        "proof_sample_mismatch",
        "verification_timeout",
        # Reasons of the first proof protocol: their events still count for 30 days.
        "proof_digest_mismatch",
        "gpu_model_mismatch",
        "cpu_mismatch",
    }
)
"""A failed proof of compute (``tesai.devices.verification.Verdict`` reasons, and no answer)."""
CAUGHT_LIES: Final = frozenset(
    {
        "node_unverified",
        "node_resource_shared",
        "node_address_mismatch",
        "head_address_refused",
    }
)
"""What an agent said about its Ray node that the control plane found untrue."""
CANARY_FAILED: Final = "canary_failed"
OFFENCES: Final = PROOF_FAILURES | CAUGHT_LIES | {CANARY_FAILED}
"""Every reason code ``record_offence`` takes."""
PROOF_REVIEW: Final = "proof_failures_review"
OFFENCES_REVIEW: Final = "offences_review"
REVIEW_REASONS: Final = frozenset({PROOF_REVIEW, OFFENCES_REVIEW})
"""Reasons a device is disabled for review (only an admin enables it again)."""


def review_reason(codes: Sequence[str], threshold: int) -> str | None:
    """Why the device must be reviewed, given its offences' codes within the review window
    (oldest first), or None while they are fewer than ``threshold``: ``proof_failures_review``
    when every one was a failed proof, ``offences_review`` otherwise."""
    if len(codes) < max(1, threshold):
        return None
    return PROOF_REVIEW if all(c in PROOF_FAILURES for c in codes) else OFFENCES_REVIEW


def review_detail(codes: Sequence[str], window_s: float) -> str:
    """The numbers behind a review: how many offences of which kind, and the last one."""
    days = f"{window_s / 86400:g} days"
    if all(c in PROOF_FAILURES for c in codes):
        return f"{len(codes)} failed proofs in {days}; the last: {codes[-1]}."
    kinds = ", ".join(f"{n} {code}" for code, n in sorted(Counter(codes).items()))
    return f"{len(codes)} offences in {days} ({kinds}); the last: {codes[-1]}."


async def record_offence(
    session: AsyncSession,
    settings: Settings,
    device: Device | uuid.UUID,
    code: str,
    detail: str = "",
    *,
    status: DeviceStatus | None = None,
) -> DeviceEvent:
    """Record an offence of ``device`` (see the module doc) and return its event.

    ``device``: the row, locked by the caller, or its id (loaded and locked here; take the
    lock after any cluster row's, as the reconciler does). ``code``: one of ``OFFENCES``.
    ``detail``: the numbers, appended to the code's sentence. ``status``: where the offence
    moves the device (None: it stays where it is). The caller's unit of work commits.

    Raises ``ValueError`` for a code that is no offence, ``DeviceNotFound`` for an unknown
    id, ``StatusConflict`` when ``status`` is not a move the device can make now.
    """
    if code not in OFFENCES:
        raise ValueError(f"{code!r} is not an offence")
    if isinstance(device, uuid.UUID):
        device = await get_device(session, device, lock=True)
    now = utcnow()
    if status is not None and status is not device.status:
        event = record_transition(session, device, status, code, detail)
    else:
        event = DeviceEvent(
            device_id=device.id,
            from_status=device.status.value,
            to_status=device.status.value,
            reason=code,
            message=event_message(code, detail),
            at=now,
        )
        session.add(event)
    device.reliability = reliability_after_offences(device.reliability, 1)
    DEVICE_OFFENCES.labels(code).inc()
    await session.flush()
    since = now - timedelta(seconds=settings.offence_review_window_s)
    codes = list(
        (
            await session.scalars(
                select(DeviceEvent.reason)
                .where(
                    DeviceEvent.device_id == device.id,
                    DeviceEvent.at >= since,
                    DeviceEvent.reason.in_(OFFENCES),
                )
                .order_by(DeviceEvent.at, DeviceEvent.id)
            )
        ).all()
    )
    reason = review_reason(codes, settings.offence_review_count)
    if reason is not None and device.status is not DeviceStatus.disabled:
        record_transition(
            session,
            device,
            DeviceStatus.disabled,
            reason,
            review_detail(codes, settings.offence_review_window_s),
        )
        await session.flush()
    return event

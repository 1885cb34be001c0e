"""Caught lies: a node its agent says runs, that the control plane's own reading of the head's
Ray state does not bear out, is an offence of its device (``tesai.devices.reputation``), once
per episode.

After each gathering run (``tesai.clusters.evidence.gather``), every node marked running whose
agent says so in a fresh heartbeat (a ``Claim``) is held against what the control plane saw.
Once it has gone unseen for longer than the evidence window (``Evidence.lapsed``: the same
test that turns its cluster ``degraded`` and stops its billing), its device is charged with:

- ``node_resource_shared`` / ``node_address_mismatch``: a Ray node claimed it, but one that
  claims other nodes' resources too, or runs at an address the device's agent does not connect
  from (``tesai.clusters.evidence.match_nodes``);
- ``head_address_refused``: it is the head, and the control plane does not connect to the
  address it would be reached at (``tesai.clusters.head_address``; not for want of a record,
  ``head_address_unknown``, which is ours to keep);
- ``node_unverified``: the head's Ray state did not list it. A worker is charged only when its
  head's Ray state answered in that run: a head that does not answer is no worker's fault.

An episode is a node's silence since its last sighting: one offence for it however many runs
find it; a node seen again and lost again starts another. Two runs at once agree on the
episode (its key holds the last sighting, ``episode_key``) and only the one that claims the key
first records it. Each offence is its own short transaction.

An honest node is not caught this way: its agent reports ``running`` only once ``ray start``
succeeded, and its head lists it ALIVE within seconds; a Ray node that dies makes its agent
report it failed, and a device that stops beating loses its node instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from tesai.clusters.head_address import HEAD_ADDRESS_UNKNOWN
from tesai.devices.errors import DeviceNotFound
from tesai.devices.reputation import record_offence
from tesai.tasks import TaskContext

log = structlog.get_logger(__name__)

CAUGHT_PREFIX: Final = "clusters:ray_caught:"
"""Key prefix of a recorded episode (``episode_key``)."""
EPISODE_TTL_S: Final = 86_400.0
"""How long an episode's key is kept: as long as sightings are (``evidence.FORGET_AFTER_S``)."""
NODE_UNVERIFIED: Final = "node_unverified"
HEAD_ADDRESS_REFUSED: Final = "head_address_refused"
MATCH_REFUSALS: Final = frozenset({"node_resource_shared", "node_address_mismatch"})


@dataclass(frozen=True)
class Claim:
    """A node its agent says runs, and what the control plane saw of it."""

    node_id: uuid.UUID
    device_id: uuid.UUID
    cluster_id: uuid.UUID
    head: bool
    lapsed: bool
    """Looked for, and not seen, for longer than the evidence window."""
    last_seen: float | None
    """When it was last seen ALIVE (None: never, as far as the cache knows)."""
    head_answered: bool
    """The head's Ray state answered in the latest run."""
    refused: str | None = None
    """Why the latest run did not count it: a ``MATCH_REFUSALS`` code, or for the head the
    ``head_address_*`` code its address was refused with."""


@dataclass(frozen=True)
class CaughtLie:
    claim: Claim
    code: str
    """The offence (``tesai.devices.reputation.CAUGHT_LIES``)."""
    detail: str


def caught_lies(claims: Iterable[Claim], *, window_s: float) -> list[CaughtLie]:
    """The claims that are lies (the module doc), with the offence each is."""
    caught = []
    for c in claims:
        if not c.lapsed:
            continue
        what = f"{'Head' if c.head else 'Worker'} node {c.node_id} of cluster {c.cluster_id}"
        if c.refused in MATCH_REFUSALS:
            caught.append(CaughtLie(c, str(c.refused), f"{what}, for over {window_s:g} s."))
        elif c.head and c.refused is not None and c.refused != HEAD_ADDRESS_UNKNOWN:
            caught.append(CaughtLie(c, HEAD_ADDRESS_REFUSED, f"{what}: {c.refused}."))
        elif c.head or c.head_answered:
            detail = f"{what}: reported running, not seen for over {window_s:g} s."
            caught.append(CaughtLie(c, NODE_UNVERIFIED, detail))
    return caught


def episode_key(claim: Claim) -> str:
    """The key of the node's current episode: its id and its last sighting."""
    last = "never" if claim.last_seen is None else f"{claim.last_seen:.6f}"
    return f"{CAUGHT_PREFIX}{claim.node_id}:{last}"


async def record_caught(ctx: TaskContext, caught: Sequence[CaughtLie]) -> int:
    """Record each lie as an offence of its device, once per episode; returns how many were
    recorded now."""
    recorded = 0
    for lie in caught:
        key = episode_key(lie.claim)
        if not await ctx.cache.set(key, lie.code, ttl_s=EPISODE_TTL_S, only_new=True):
            continue
        try:
            async with ctx.sessionmaker.begin() as session:
                await record_offence(
                    session, ctx.settings, lie.claim.device_id, lie.code, lie.detail
                )
        except DeviceNotFound:
            continue
        except Exception:
            # The next run tries again; gathering (what bills) goes on meanwhile.
            log.exception("device_offence_failed", device_id=str(lie.claim.device_id))
            await ctx.cache.delete(key)
            continue
        recorded += 1
        log.warning(
            "device_offence",
            device_id=str(lie.claim.device_id),
            node_id=str(lie.claim.node_id),
            cluster_id=str(lie.claim.cluster_id),
            reason=lie.code,
        )
    return recorded

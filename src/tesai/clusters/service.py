"""The rules of clusters: quotes, creation with gang booking, extend, terminate, read.

Booking is guaranteed by the database: a live node's ``device_id`` is unique
(``uq_cluster_nodes_live_device``), so two processes placing at once cannot both book a
device; the loser's transaction fails and the customer gets a clear 409 to retry.
"""

from __future__ import annotations

import functools
import importlib.metadata
import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tesai.billing import guardrails, metering
from tesai.billing import service as billing
from tesai.billing.money import customer_charge, spend_limit
from tesai.clusters.errors import (
    ClusterNotActive,
    ClusterNotFound,
    InvalidClusterRequest,
    NoCapacity,
    PoolChanged,
    QuoteExpired,
    QuoteNotFound,
)
from tesai.clusters.models import (
    Cluster,
    ClusterEvent,
    ClusterNode,
    ClusterStatus,
    DeviceReservation,
    NodeRole,
    NodeState,
    Quote,
)
from tesai.clusters.pool import PoolCache, load_pool, pool_cache, to_placement_request
from tesai.clusters.schemas import ClusterRequest, CreateCluster
from tesai.clusters.states import LIVE, InvalidClusterTransition, check_transition
from tesai.db import insert_rows
from tesai.devices.models import Device, DeviceEvent, DeviceStatus
from tesai.devices.states import check_transition as check_device_transition
from tesai.errors import AppError
from tesai.kit.secretbox import SecretBox, load_box
from tesai.kit.time import utcnow
from tesai.observability.business import DEVICE_TRANSITIONS, PLACEMENT_DURATION
from tesai.runtime import Runtime
from tesai.scheduling import placement as pl
from tesai.scheduling.pricing import PriceBreakdown, ceil_div, price_placement
from tesai.settings import Settings

RESERVE_ATTEMPTS = 3
BOOK_ATTEMPTS = 5
"""Placements tried per create when the process's index turns out stale (then a 409)."""


def secret_box(settings: Settings) -> SecretBox:
    """Seals the clusters' Ray tokens; the key lives in ``home`` (or the configured file)."""
    return load_box(settings.secret_box_key_file or settings.home / "secret_box.key")


def hold_ref(cluster_id: uuid.UUID) -> str:
    return f"cluster:{cluster_id}"


@functools.cache
def ray_version() -> str:
    """The Ray version this control plane pins; every node of a cluster must run it."""
    return importlib.metadata.version("ray")


def record_event(
    session: AsyncSession,
    cluster: Cluster,
    reason: str,
    *,
    to: ClusterStatus | None = None,
    detail: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    """Move ``cluster`` to ``to`` (checked by the state machine) and store the event."""
    session.add(cluster_event(cluster, reason, to=to, detail=detail, data=data))


def cluster_event(
    cluster: Cluster,
    reason: str,
    *,
    to: ClusterStatus | None = None,
    detail: str = "",
    data: dict[str, Any] | None = None,
) -> ClusterEvent:
    """``record_event`` without the session: moves ``cluster`` and returns the event."""
    from_status = cluster.status
    message = detail
    if to is not None and to is not cluster.status:
        try:
            t = check_transition(cluster.status, to, reason, detail)
        except InvalidClusterTransition as exc:
            raise ClusterNotActive(f"Cluster is {cluster.status.value}: {exc}") from exc
        cluster.status = to
        cluster.status_reason = reason
        cluster.version += 1
        message = t.message
    return ClusterEvent(
        cluster_id=cluster.id,
        at=utcnow(),
        from_status=from_status.value,
        to_status=(to or cluster.status).value,
        reason=reason,
        message=message[:512],
        data=data or {},
    )


# --- quotes ----------------------------------------------------------------------------------


def _placement_request(
    req: ClusterRequest, excluded: frozenset[str] = frozenset()
) -> pl.PlacementRequest:
    try:
        preq = to_placement_request(req, excluded=excluded)
        preq.shapes()
    except pl.InvalidPlacementRequest as exc:
        raise InvalidClusterRequest(str(exc)) from exc
    return preq


def _no_capacity(result: pl.Shortfall) -> NoCapacity:
    return NoCapacity(
        result.message,
        need=result.need,
        matching=result.matching,
        eliminated=[asdict(e) for e in result.eliminated],
    )


async def _place(
    session: AsyncSession, req: ClusterRequest, quote_id: uuid.UUID, excluded: frozenset[str]
) -> pl.Placement:
    """Place on a full read of the pool (no process index)."""
    preq = _placement_request(req, excluded)
    devices = await load_pool(session, utcnow(), quote_id=quote_id)
    with PLACEMENT_DURATION.time():
        result = pl.place_reference(devices, preq)
    if isinstance(result, pl.Shortfall):
        raise _no_capacity(result)
    return result


async def _place_and_lock(
    session: AsyncSession,
    pool: PoolCache,
    req: ClusterRequest,
    excluded: frozenset[str] = frozenset(),
) -> tuple[pl.Placement, list[str]]:
    """Place on the process's index and lock the chosen devices' rows, all bookable.

    The index may be stale: a chosen device that another transaction has locked, booked or
    changed is learnt and the request placed again (``BOOK_ATTEMPTS`` times at most), so the
    answer is other devices or a shortfall in numbers. The devices stay held in the index.
    """
    preq = _placement_request(req, excluded)
    locked_elsewhere: set[str] = set(excluded)
    for _ in range(BOOK_ATTEMPTS):
        index = await pool.current(session)
        if locked_elsewhere:
            preq = replace(preq, excluded_device_ids=frozenset(locked_elsewhere))
        with PLACEMENT_DURATION.time():
            result = index.place(preq)
        if isinstance(result, pl.Shortfall):
            raise _no_capacity(result)
        ids = list(result.device_ids)
        pool.hold(ids)
        checked = await pool.lock(session, ids)
        if checked.ok:
            return result, ids
        locked_elsewhere |= {i for i in checked.unavailable if i not in checked.rows}
    raise PoolChanged("The pool changed while placing; try again")


async def _mark_rented(session: AsyncSession, rented: dict[uuid.UUID, uuid.UUID]) -> None:
    """online → busy for locked devices (device → its cluster), with their events, in two
    statements."""
    await session.execute(
        update(Device)
        .where(Device.id.in_(list(rented)))
        .values(status=DeviceStatus.busy, status_reason="rented", version=Device.version + 1)
        .execution_options(synchronize_session=False)
    )
    at = utcnow()
    await insert_rows(
        session,
        DeviceEvent,
        [
            {
                "device_id": device_id,
                "at": at,
                "from_status": DeviceStatus.online.value,
                "to_status": DeviceStatus.busy.value,
                "reason": "rented",
                "message": check_device_transition(
                    DeviceStatus.online, DeviceStatus.busy, "rented", f"cluster {cluster_id}"
                ).message,
            }
            for device_id, cluster_id in rented.items()
        ],
    )
    DEVICE_TRANSITIONS.labels(DeviceStatus.busy.value, "rented").inc(len(rented))


async def _reserve(
    session: AsyncSession, quote_id: uuid.UUID, device_ids: list[uuid.UUID], expires_at: Any
) -> set[uuid.UUID]:
    """Reserve devices for a quote; returns those actually reserved (others are held)."""
    stmt = insert(DeviceReservation).values(
        [{"device_id": d, "quote_id": quote_id, "expires_at": expires_at} for d in device_ids]
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[DeviceReservation.device_id],
        set_={"quote_id": stmt.excluded.quote_id, "expires_at": stmt.excluded.expires_at},
        where=(DeviceReservation.expires_at <= utcnow()) | (DeviceReservation.quote_id == quote_id),
    ).returning(DeviceReservation.device_id)
    return set((await session.execute(upsert)).scalars())


def _quote_view(placement: pl.Placement, price: PriceBreakdown) -> dict[str, Any]:
    return {
        "shape": str(placement.shape),
        "region": placement.region,
        "reasons": list(placement.reasons),
        "devices": [
            {
                "device_id": d.device_id,
                "region": d.region,
                "gpu_count": d.gpu_count,
                "price_per_gpu_hour_micro": d.price_per_gpu_hour_micro,
                "hourly_micro": d.hourly_price_micro,
                "score": round(d.score.total, 4),
            }
            for d in placement.devices
        ],
        "hourly_fee_micro": price.hourly_fee_micro,
        "hourly_total_micro": price.hourly_total_micro,
        "compute_micro": price.compute_micro,
    }


async def create_quote(
    session: AsyncSession,
    settings: Settings,
    customer_id: uuid.UUID,
    req: ClusterRequest,
    *,
    pool: PoolCache | None = None,
) -> Quote:
    """Place the request, price it and reserve its devices until the quote expires.

    With ``pool`` (the process's ``PoolCache``) placement runs on its index instead of a
    full read of the pool, and the chosen devices' rows are locked and checked as a booking
    does (a device the index still shows free but that is rented, held by another quote or
    changed is learnt by the index and another is chosen): a quote never names a device that
    cannot be booked, however stale the index. The reservation upsert arbitrates either way.
    Raises ``NoCapacity`` (409, with the shortfall in numbers) or ``InvalidClusterRequest``.
    """
    quote_id = uuid.uuid4()
    expires_at = utcnow() + timedelta(seconds=settings.quote_ttl_s)
    excluded: frozenset[str] = frozenset()
    for _ in range(RESERVE_ATTEMPTS):
        held: list[str] = []
        if pool is None:
            placement = await _place(session, req, quote_id, excluded)
        else:
            placement, held = await _place_and_lock(session, pool, req, excluded)
        price = price_placement(placement, req.duration_s, settings.platform_fee_bps)
        quote = Quote(
            id=quote_id,
            customer_id=customer_id,
            request=req.model_dump(mode="json"),
            placement=_quote_view(placement, price),
            hourly_micro=price.hourly_micro,
            total_micro=price.total_micro,
            fee_micro=price.fee_micro,
            expires_at=expires_at,
        )
        session.add(quote)
        await session.flush()
        wanted = [uuid.UUID(d) for d in placement.device_ids]
        got = await _reserve(session, quote_id, wanted, expires_at)
        if got == set(wanted):
            if pool is not None:
                # The reservation keeps the devices now (its rows' locks until the commit); a
                # placement of this process that picks one learns it, with its expiry, from
                # the rows. A local hold could outlive it (an early release, a booking).
                pool.unhold(held)
            return quote
        # Someone reserved a device between our read and our write: try without them.
        await session.execute(
            delete(DeviceReservation).where(DeviceReservation.quote_id == quote_id)
        )
        await session.delete(quote)
        await session.flush()
        lost = {str(d) for d in set(wanted) - got}
        excluded = excluded | lost
        if pool is not None:
            pool.unhold(d for d in held if d not in lost)
            pool.hold(lost, ttl_s=settings.quote_ttl_s)
    raise NoCapacity("The pool changed while quoting; try again")


async def get_quote(session: AsyncSession, customer_id: uuid.UUID, quote_id: uuid.UUID) -> Quote:
    quote = await session.get(Quote, quote_id, with_for_update=True)
    if quote is None or quote.customer_id != customer_id:
        raise QuoteNotFound("No such quote")
    return quote


@dataclass(frozen=True)
class ReleasedReservation:
    """A device reservation of a customer's live quote, given up for that customer's create."""

    device_id: str
    quote_id: uuid.UUID
    customer_id: uuid.UUID
    expires_at: datetime


async def _release_own_quotes(
    session: AsyncSession, pool: PoolCache, customer_ids: Collection[uuid.UUID]
) -> list[ReleasedReservation]:
    """Lift the device reservations of the customers' live quotes, in the transaction of
    their create without a quote, so that a customer's own quote never counts against their
    own create (``tesai quote …`` then ``tesai cluster create …``, the README's order).

    Released rather than used: a quote is booked by naming it (``quote_id``, ``tesai cluster
    create --quote``); a create that names none asks for a placement now, and matching it to
    an earlier quote by its request would guess at intent (several quotes, another name or
    budget) and need a second booking path through the set-based batch. Released, the quoted
    devices are free again for the customer's own placement, which picks them by the same
    rule that picked them for the quote, at the price then current. Nobody else gains from
    it: their placements in the same transaction keep the released devices excluded, and
    once placed, ``_restore_own_quotes`` puts back every quote whose devices the create did
    not take (a create that raises rolls the release back with everything else). A quote
    that lost a device to the create gives up all of its devices, since it can no longer be
    booked. A reservation another transaction has locked (its quote being booked right now)
    is skipped, never waited for.
    """
    mine = (
        select(DeviceReservation.device_id, Quote.customer_id)
        .join(Quote, Quote.id == DeviceReservation.quote_id)
        .where(Quote.customer_id.in_(list(customer_ids)), DeviceReservation.expires_at > utcnow())
        .with_for_update(of=DeviceReservation, skip_locked=True)
        .cte("mine")
    )
    rows = await session.execute(
        delete(DeviceReservation)
        .where(DeviceReservation.device_id == mine.c.device_id)
        .returning(
            DeviceReservation.device_id,
            DeviceReservation.quote_id,
            DeviceReservation.expires_at,
            mine.c.customer_id,
        )
    )
    released = [
        ReleasedReservation(str(device_id), quote_id, customer_id, expires_at)
        for device_id, quote_id, expires_at, customer_id in rows.tuples()
    ]
    if released and pool.index is not None:
        # This process may have learnt the reservations: they are the customer's to place on.
        pool.unhold(r.device_id for r in released)
    return released


async def _restore_own_quotes(
    session: AsyncSession, released: Sequence[ReleasedReservation], taken: Collection[str]
) -> None:
    """Give the released reservations back to every quote none of whose devices were
    ``taken`` by the creates they were released for."""
    spent = {r.quote_id for r in released if r.device_id in taken}
    released = [r for r in released if r.quote_id not in spent]
    if not released:
        return
    await session.execute(
        insert(DeviceReservation)
        .values(
            [
                {
                    "device_id": uuid.UUID(r.device_id),
                    "quote_id": r.quote_id,
                    "expires_at": r.expires_at,
                }
                for r in released
            ]
        )
        .on_conflict_do_nothing()
    )


# --- clusters ---------------------------------------------------------------------------------


async def create_cluster(
    session: AsyncSession, runtime: Runtime, customer_id: uuid.UUID, body: CreateCluster
) -> Cluster:
    """Book the quoted devices (all or none), hold the money and start provisioning.

    Without a quote, the request is placed on the process's ``PoolCache`` index and the chosen
    device rows are locked and re-checked (``SKIP LOCKED``; a stale pick is retried on other
    devices); the partial unique index on live ``cluster_nodes.device_id`` stays the arbiter.
    The customer's own live quotes do not count against it (``_release_own_quotes``): a quote
    whose devices it takes gives them up, the others keep theirs.
    Raises ``QuoteNotFound``, ``QuoteExpired``, ``NoCapacity`` (a device was taken),
    ``InsufficientFunds`` (402). Nothing is booked or held when it raises.
    """
    settings = runtime.settings
    pool = pool_cache(runtime.state)
    now = utcnow()
    held: list[str] = []
    if body.quote_id is not None:
        quote = await get_quote(session, customer_id, body.quote_id)
        if quote.used_at is not None:
            raise QuoteExpired("This quote was already used")
        if quote.expires_at <= now:
            raise QuoteExpired("This quote expired; ask for a new one")
        quoted = [d["device_id"] for d in quote.placement["devices"]]
        checked = await pool.lock(
            session, quoted, quote_id=quote.id, skip_locked=False, compare=False
        )
        if not checked.ok:
            raise NoCapacity("A quoted device is no longer available; ask for a new quote")
    else:
        assert body.request is not None
        released = await _release_own_quotes(session, pool, [customer_id])
        placement, held = await _place_and_lock(session, pool, body.request)
        await _restore_own_quotes(session, released, placement.device_ids)
        price = price_placement(placement, body.request.duration_s, settings.platform_fee_bps)
        quote = Quote(
            id=uuid.uuid4(),
            customer_id=customer_id,
            request=body.request.model_dump(mode="json"),
            placement=_quote_view(placement, price),
            hourly_micro=price.hourly_micro,
            total_micro=price.total_micro,
            fee_micro=price.fee_micro,
            expires_at=now + timedelta(seconds=settings.quote_ttl_s),
        )
        session.add(quote)
    try:
        return await _book(session, runtime, customer_id, body, quote, now)
    except BaseException:
        if held and pool.index is not None:
            pool.unhold(held)
        raise


HELD_FOR_BATCH = "tesai.clusters.held_for_batch"
"""``session.info`` key: the devices ``create_clusters`` holds in this process's index for
the session's transaction (chosen, or booked)."""


def give_back_holds(session: AsyncSession, runtime: Runtime) -> None:
    """The transaction of ``create_clusters`` will not commit: the devices it took in this
    process's index are free there again (instead of held until the hold's TTL)."""
    pool = pool_cache(runtime.state)
    held: set[str] = session.info.pop(HELD_FOR_BATCH, set())
    if held and pool.index is not None:
        pool.unhold(held)


@dataclass(frozen=True)
class NewCluster:
    """One ``create_cluster`` call (with a request, not a quote) for ``create_clusters``."""

    customer_id: uuid.UUID
    body: CreateCluster


async def create_clusters(
    session: AsyncSession, runtime: Runtime, items: Sequence[NewCluster]
) -> list[Cluster | AppError]:
    """``create_cluster`` for many requests in one transaction and a fixed number of
    statements, whatever their number: the group commit of an API process under load.

    The same rules and answers as one by one, in order: every request is placed on the
    index (the devices chosen for one are held from the next), the chosen rows are locked
    and re-checked in one statement (a stale pick is placed again, ``BOOK_ATTEMPTS`` rounds
    at most), the holds are placed as one ledger batch that checks each customer's spend cap
    and funds in order (409 / 402 in the request's slot), and the clusters, nodes, events,
    quotes and device changes of the rest are written in one statement each. A request's
    slot holds its cluster or its error; nothing of a refused request is written. As one by
    one, the customers' own live quotes do not count against their requests (their
    reservations are lifted for them alone; a quote keeps its devices unless its own
    customer's booked request takes one). One difference from one by one: devices chosen
    for a request refused for money are free again only from the next batch on. Requests
    naming a quote are not taken (they wait on their quoted devices' rows:
    ``create_cluster``, alone).
    """
    try:
        return await _place_and_book(session, runtime, items)
    except BaseException:
        give_back_holds(session, runtime)
        raise


async def _place_and_book(
    session: AsyncSession, runtime: Runtime, items: Sequence[NewCluster]
) -> list[Cluster | AppError]:
    settings = runtime.settings
    pool = pool_cache(runtime.state)
    held: set[str] = session.info.setdefault(HELD_FOR_BATCH, set())
    now = utcnow()
    out: list[Cluster | AppError | None] = [None] * len(items)
    wanted: dict[int, pl.PlacementRequest] = {}
    for i, item in enumerate(items):
        if item.body.request is None:
            raise ValueError("create_clusters takes requests, not quotes")
        try:
            wanted[i] = _placement_request(item.body.request)
        except AppError as exc:
            out[i] = exc

    released = (
        await _release_own_quotes(session, pool, {items[i].customer_id for i in wanted})
        if wanted
        else []
    )
    if released:
        # A customer's released devices stay out of everyone else's placements.
        theirs: dict[uuid.UUID, set[str]] = {}
        for r in released:
            theirs.setdefault(r.customer_id, set()).add(r.device_id)
        everyone = {r.device_id for r in released}
        for i, preq in wanted.items():
            others = everyone - theirs.get(items[i].customer_id, set())
            if others:
                wanted[i] = replace(preq, excluded_device_ids=preq.excluded_device_ids | others)

    placed: dict[int, pl.Placement] = {}
    locked_elsewhere: set[str] = set()
    for _ in range(BOOK_ATTEMPTS):
        if not wanted:
            break
        index = await pool.current(session)
        chosen: dict[int, pl.Placement] = {}
        for i, preq in wanted.items():
            if locked_elsewhere:
                preq = replace(
                    preq, excluded_device_ids=preq.excluded_device_ids | locked_elsewhere
                )
            with PLACEMENT_DURATION.time():
                result = index.place(preq)
            if isinstance(result, pl.Shortfall):
                out[i] = _no_capacity(result)
                continue
            pool.hold(result.device_ids)
            held.update(result.device_ids)
            chosen[i] = result
        wanted = {i: wanted[i] for i in chosen}
        if not chosen:
            break
        checked = await pool.lock(
            session, [d for p in chosen.values() for d in p.device_ids], release=False
        )
        for i, result in chosen.items():
            if checked.unavailable.isdisjoint(result.device_ids):
                placed[i] = result
                del wanted[i]
            else:  # another quote's hold on a device stays in the index until it ends
                held.difference_update(result.device_ids)
                pool.unhold(d for d in result.device_ids if d not in checked.reserved)
        locked_elsewhere |= {d for d in checked.unavailable if d not in checked.rows}
    for i in wanted:
        out[i] = PoolChanged("The pool changed while placing; try again")

    box = secret_box(settings)
    booked: dict[int, tuple[Cluster, Quote]] = {}
    for i in sorted(placed):
        item = items[i]
        req = item.body.request
        assert req is not None
        price = price_placement(placed[i], req.duration_s, settings.platform_fee_bps)
        quote = Quote(
            id=uuid.uuid4(),
            customer_id=item.customer_id,
            request=req.model_dump(mode="json"),
            placement=_quote_view(placed[i], price),
            hourly_micro=price.hourly_micro,
            total_micro=price.total_micro,
            fee_micro=price.fee_micro,
            expires_at=now + timedelta(seconds=settings.quote_ttl_s),
            used_at=now,
            created_at=now,
        )
        cluster = _new_cluster(settings, item.customer_id, item.body, quote, now, req=req, box=box)
        cluster.created_at = now
        booked[i] = (cluster, quote)
    rooms = await guardrails.lock_caps(
        session, settings, [c.customer_id for c, _ in booked.values()]
    )
    moved = await billing.place_holds(
        session,
        [
            billing.NewHold(
                user_id=c.customer_id,
                amount_micro=c.hold_micro,
                ref=hold_ref(c.id),
                idempotency_key=f"cluster-hold:{c.id}",
            )
            for c, _ in booked.values()
        ],
        caps=rooms,
    )
    for i, movement in zip(list(booked), moved, strict=True):
        if isinstance(movement, AppError):
            out[i] = movement
            held.difference_update(placed[i].device_ids)
            pool.unhold(placed[i].device_ids)
            del booked[i]
    taken = {d for i in booked for d in placed[i].device_ids}
    await _restore_own_quotes(session, released, taken)
    if booked:
        await _write_clusters(session, list(booked.values()))
    for i, (cluster, _) in booked.items():
        out[i] = cluster
    done = [o for o in out if o is not None]
    assert len(done) == len(items)
    return done


async def _write_clusters(session: AsyncSession, booked: list[tuple[Cluster, Quote]]) -> None:
    """The rows of new clusters (their devices locked, their holds placed): one statement
    per table."""
    events = [e for c, q in booked for e in _first_events(c, q)]
    await insert_rows(session, Quote, [_values(q) for _, q in booked])
    await insert_rows(session, Cluster, [_values(c) for c, _ in booked])
    await insert_rows(
        session,
        ClusterNode,
        [row for c, q in booked for row in _node_rows(c.id, q.placement["devices"])],
    )
    await insert_rows(session, ClusterEvent, [_values(e, skip=("id",)) for e in events])
    await _mark_rented(
        session,
        {uuid.UUID(d["device_id"]): c.id for c, q in booked for d in q.placement["devices"]},
    )


def _values(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A new ORM object's column values, for a set-based INSERT."""
    return {
        a.key: getattr(obj, a.key)
        for a in sa_inspect(type(obj)).column_attrs
        if a.key not in skip and a.key in obj.__dict__
    }


async def _book(
    session: AsyncSession,
    runtime: Runtime,
    customer_id: uuid.UUID,
    body: CreateCluster,
    quote: Quote,
    now: datetime,
) -> Cluster:
    """Write the cluster for a quote whose device rows this transaction has locked."""
    await guardrails.check_new_hold(session, runtime.settings, customer_id, quote.total_micro)
    cluster = _new_cluster(runtime.settings, customer_id, body, quote, now)
    cluster_id = cluster.id
    session.add(cluster)
    devices = quote.placement["devices"]
    session.add_all(ClusterNode(**row) for row in _node_rows(cluster_id, devices))
    quote.used_at = now
    session.add_all(_first_events(cluster, quote))
    try:
        await session.flush()
    except IntegrityError as exc:
        raise NoCapacity("A quoted device was booked by someone else; ask for a new quote") from exc
    await _mark_rented(session, {uuid.UUID(d["device_id"]): cluster_id for d in devices})
    await billing.place_hold(
        session,
        user_id=customer_id,
        amount_micro=quote.total_micro,
        ref=hold_ref(cluster_id),
        idempotency_key=f"cluster-hold:{cluster_id}",
    )
    if body.quote_id is not None:
        await session.execute(
            delete(DeviceReservation).where(DeviceReservation.quote_id == quote.id)
        )
    await session.flush()
    return cluster


def _new_cluster(
    settings: Settings,
    customer_id: uuid.UUID,
    body: CreateCluster,
    quote: Quote,
    now: datetime,
    *,
    req: ClusterRequest | None = None,
    box: SecretBox | None = None,
) -> Cluster:
    """The cluster row for a quote (pending; ``_first_events`` moves it on); ``req`` is the
    quote's request when the caller has it already, ``box`` the settings' secret box."""
    req = req or ClusterRequest.model_validate(quote.request)
    box = box or secret_box(settings)
    return Cluster(
        id=uuid.uuid4(),
        customer_id=customer_id,
        name=body.name,
        status=ClusterStatus.pending,
        request=quote.request,
        gpu_model=req.gpu_model,
        gpus=req.gpus or (req.nodes or 0),
        min_gpus=req.min_gpus,
        max_gpus=req.max_gpus,
        duration_s=req.duration_s,
        max_price_per_gpu_hour_micro=req.max_price_per_gpu_hour_micro,
        hourly_price_micro=quote.hourly_micro,
        budget_micro=body.budget_micro,
        hold_micro=quote.total_micro,
        ray_version=ray_version(),
        ray_token_sealed=box.seal(secrets.token_urlsafe(32)),
        provisioning_deadline=now + timedelta(seconds=settings.provisioning_deadline_s),
        version=1,
        replacements=0,
    )


def _node_rows(cluster_id: uuid.UUID, devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The nodes of a new cluster, one per quoted device; the first is the head."""
    return [
        {
            "id": uuid.uuid4(),
            "cluster_id": cluster_id,
            "device_id": uuid.UUID(d["device_id"]),
            "index": i,
            "role": NodeRole.head if i == 0 else NodeRole.worker,
            "state": NodeState.assigned,
            "gpus": d["gpu_count"],
            "price_per_hour_micro": d["hourly_micro"],
            "healthy_seconds": 0,
        }
        for i, d in enumerate(devices)
    ]


def _first_events(cluster: Cluster, quote: Quote) -> list[ClusterEvent]:
    """created, then pending → provisioning."""
    nodes = len(quote.placement["devices"])
    return [
        cluster_event(cluster, "created", detail=f"{nodes} nodes, quote {quote.id}"),
        cluster_event(cluster, "provisioning", to=ClusterStatus.provisioning),
    ]


async def get_cluster(
    session: AsyncSession,
    customer_id: uuid.UUID | None,
    cluster_id: uuid.UUID,
    *,
    lock: bool = False,
) -> Cluster:
    """The cluster, if ``customer_id`` owns it (None: any, for admins); else 404."""
    cluster = await session.get(Cluster, cluster_id, with_for_update=lock)
    if cluster is None or (customer_id is not None and cluster.customer_id != customer_id):
        raise ClusterNotFound("No such cluster")
    return cluster


async def list_clusters(session: AsyncSession, customer_id: uuid.UUID) -> list[Cluster]:
    rows = await session.execute(
        select(Cluster)
        .where(Cluster.customer_id == customer_id)
        .order_by(Cluster.created_at.desc())
    )
    return list(rows.scalars())


async def all_clusters(
    session: AsyncSession,
    *,
    status: ClusterStatus | None = None,
    customer_id: uuid.UUID | None = None,
    before: datetime | None = None,
    limit: int = 50,
) -> list[Cluster]:
    """Every customer's clusters, newest first (admin); ``before`` pages by ``created_at``."""
    query = select(Cluster).order_by(Cluster.created_at.desc(), Cluster.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Cluster.status == status)
    if customer_id is not None:
        query = query.where(Cluster.customer_id == customer_id)
    if before is not None:
        query = query.where(Cluster.created_at < before)
    return list((await session.execute(query)).scalars())


async def nodes_of(session: AsyncSession, cluster_id: uuid.UUID) -> list[ClusterNode]:
    rows = await session.execute(
        select(ClusterNode)
        .where(ClusterNode.cluster_id == cluster_id)
        .order_by(ClusterNode.created_at)
    )
    return list(rows.scalars())


async def events_of(session: AsyncSession, cluster_id: uuid.UUID) -> list[ClusterEvent]:
    rows = await session.execute(
        select(ClusterEvent).where(ClusterEvent.cluster_id == cluster_id).order_by(ClusterEvent.id)
    )
    return list(rows.scalars())


async def terminate_cluster(
    session: AsyncSession, cluster: Cluster, reason: str = "customer_terminated", detail: str = ""
) -> Cluster:
    """Ask for the cluster to stop; the reconciler releases nodes and settles the bill."""
    if cluster.status in (
        ClusterStatus.terminating,
        ClusterStatus.terminated,
        ClusterStatus.failed,
    ):
        return cluster
    record_event(session, cluster, reason, to=ClusterStatus.terminating, detail=detail)
    await session.flush()
    return cluster


async def extend_cluster(
    session: AsyncSession, settings: Settings, cluster: Cluster, duration_s: int
) -> Cluster:
    """Add ``duration_s`` to the rental and its price to the hold (402 when short)."""
    if cluster.status not in LIVE:
        raise ClusterNotActive(f"Cluster is {cluster.status.value}")
    amount = customer_charge(
        ceil_div(cluster.hourly_price_micro * duration_s, 3600), settings.platform_fee_bps
    )
    await guardrails.check_new_hold(session, settings, cluster.customer_id, amount)
    # The hold's money moves and its meters' paid end moves: the tick's lock comes first.
    await metering.settlement_lock(session)
    await billing.extend_hold(
        session,
        user_id=cluster.customer_id,
        amount_micro=amount,
        ref=hold_ref(cluster.id),
        idempotency_key=f"cluster-extend:{cluster.id}:{cluster.version}",
    )
    cluster.duration_s += duration_s
    cluster.hold_micro += amount
    if cluster.ends_at is not None:
        cluster.ends_at += timedelta(seconds=duration_s)
    await metering.limit_cluster_billing(
        session,
        cluster_id=cluster.id,
        ends_at=cluster.ends_at,
        limit_micro=spend_limit(cluster.hold_micro, cluster.budget_micro),
        fee_bps=settings.platform_fee_bps,
    )
    record_event(session, cluster, "extended", detail=f"+{duration_s} s")
    cluster.version += 1
    await session.flush()
    return cluster

"""Shared by the property test and bench/ledger_chaos.py: crash-injected money operations.

``Chaos.attempt`` runs one service call in its own unit of work, with a crash injected at a
chosen checkpoint inside the service (an exception between flush and commit) or right
after the commit (the caller never hears the answer), then retries it with the same
idempotency key until it returns. ``Chaos.check`` verifies the ledger invariants in SQL.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from tesai.accounts import service as accounts
from tesai.billing import service
from tesai.billing.errors import InsufficientFunds
from tesai.billing.ledger import Movement, checkpoint, set_fault_hook
from tesai.billing.money import split_capped

CRASH_POINTS = ("accounts", "claimed", "posted", "audited", "before_commit", "after_commit")


class InjectedCrash(Exception):
    """Stands for a process dying at that point: the unit of work never commits."""


Op = Callable[[AsyncSession], Awaitable[Movement]]
Journal = Callable[[str, dict[str, Any]], None]


def service_call(name: str, kwargs: dict[str, Any]) -> Op:
    """The unit of work for ``tesai.billing.service.<name>(session, **kwargs)``."""
    fn = getattr(service, name)

    async def op(s: AsyncSession) -> Movement:
        movement: Movement = await fn(s, **kwargs)
        return movement

    return op


@dataclass
class Model:
    """What the balances must be, kept by plain arithmetic beside the database."""

    available: dict[uuid.UUID, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    hold_owner: dict[str, uuid.UUID] = field(default_factory=dict)
    earnings: dict[uuid.UUID, int] = field(default_factory=dict)
    pending: dict[uuid.UUID, int] = field(default_factory=dict)
    payouts: dict[uuid.UUID, tuple[uuid.UUID, int]] = field(default_factory=dict)
    fees: int = 0
    deposited: int = 0
    granted: int = 0
    paid_out: int = 0
    credited_signatures: dict[str, int] = field(default_factory=dict)


@dataclass
class Chaos:
    sessionmaker: async_sessionmaker[AsyncSession]
    rng: random.Random
    crash_rate: float = 0.3
    model: Model = field(default_factory=Model)
    customers: list[uuid.UUID] = field(default_factory=list)
    providers: list[uuid.UUID] = field(default_factory=list)
    operations: int = 0
    crashes: int = 0
    refusals: int = 0
    base_fees: int = 0
    run: str = field(default_factory=lambda: secrets.token_hex(4))
    sig_owner: dict[str, uuid.UUID] = field(default_factory=dict)

    async def setup(self, customers: int = 3, providers: int = 2) -> None:
        async with self.sessionmaker() as s, s.begin():
            for i in range(customers + providers):
                user = await accounts.create_user(
                    s,
                    email=f"chaos-{self.run}-{i}@example.com",
                    roles=("customer",) if i < customers else ("provider",),
                )
                (self.customers if i < customers else self.providers).append(user.id)
            self.base_fees = int(
                await s.scalar(
                    text(
                        "SELECT coalesce(sum(balance), 0) FROM ledger_accounts"
                        " WHERE kind = 'platform_fees'"
                    )
                )
                or 0
            )
        for c in self.customers:
            self.model.available[c] = 0
        for p in self.providers:
            self.model.earnings[p] = 0
            self.model.pending[p] = 0

    # --- running with crashes ------------------------------------------------------------
    journal: Journal | None = None
    """Told each call before it runs (the SIGKILL variant replays the last one)."""

    async def call(self, name: str, **kwargs: Any) -> Movement:
        if self.journal is not None:
            self.journal(name, kwargs)
        return await self.attempt(service_call(name, kwargs), self.crash_point())

    async def attempt(self, op: Op, crash_at: str | None) -> Movement:
        """Run ``op`` once for real, crashing first at ``crash_at``; retry until it returns."""
        self.operations += 1
        while True:
            armed = {"point": crash_at}

            def hook(name: str, armed: dict[str, str | None] = armed) -> None:
                if armed["point"] == name:
                    armed["point"] = None
                    raise InjectedCrash(name)

            set_fault_hook(hook)
            try:
                async with self.sessionmaker() as s, s.begin():
                    movement = await op(s)
                    checkpoint("before_commit")
                checkpoint("after_commit")
                return movement
            except InjectedCrash:
                self.crashes += 1
                crash_at = None  # the retry runs clean (a new crash may be drawn by caller)
            finally:
                set_fault_hook(None)

    def crash_point(self) -> str | None:
        if self.rng.random() < self.crash_rate:
            return self.rng.choice(CRASH_POINTS)
        return None

    # --- operations (model updated from the single real outcome) -------------------------
    async def deposit(self, customer: uuid.UUID, sig_no: int) -> None:
        """Credit a chain signature; a signature seen before must change nothing."""
        signature = f"{self.run}-sig-{sig_no}"
        amount = 1_000 * (sig_no % 97 + 1)  # a signature always carries the same amount
        seen = signature in self.model.credited_signatures
        owner = self.sig_owner[signature] if seen else customer

        movement = await self.call(
            "credit_deposit",
            user_id=owner,
            amount_micro=amount,
            signature=signature,
            idempotency_key=f"deposit:{signature}",
        )
        if seen:
            assert movement.replayed
            return
        self.model.credited_signatures[signature] = amount
        self.sig_owner[signature] = owner
        self.model.available[owner] += amount
        self.model.deposited += amount

    async def grant(self, customer: uuid.UUID, amount: int) -> None:
        key = f"grant:{self.run}:{self.operations}"

        await self.call(
            "admin_grant_credit",
            admin_user_id=None,
            user_id=customer,
            amount_micro=amount,
            reason="chaos",
            idempotency_key=key,
        )
        self.model.available[customer] += amount
        self.model.granted += amount

    async def hold(self, customer: uuid.UUID, amount: int, ref: str | None = None) -> None:
        new = ref is None
        ref = ref or f"{self.run}-hold-{self.operations}"
        key = f"hold:{self.run}:{self.operations}"

        try:
            await self.call(
                "place_hold" if new else "extend_hold",
                user_id=customer,
                amount_micro=amount,
                ref=ref,
                idempotency_key=key,
            )
        except InsufficientFunds:
            assert self.model.available[customer] < amount
            self.refusals += 1
            return
        assert self.model.available[customer] >= amount
        self.model.available[customer] -= amount
        self.model.held[ref] = self.model.held.get(ref, 0) + amount
        self.model.hold_owner[ref] = customer

    async def settle(self, ref: str, provider: uuid.UUID, amount: int, fee_bps: int) -> None:
        customer = self.model.hold_owner[ref]
        key = f"settle:{self.run}:{self.operations}"

        movement = await self.call(
            "settle_usage",
            user_id=customer,
            ref=ref,
            provider_user_id=provider,
            provider_amount_micro=amount,
            fee_bps=fee_bps,
            idempotency_key=key,
        )
        split = split_capped(amount, fee_bps, self.model.held[ref])
        assert movement.result["provider"] == split.provider
        assert movement.result["fee"] == split.fee
        self.model.held[ref] -= split.total
        self.model.earnings[provider] += split.provider
        self.model.fees += split.fee

    async def release(self, ref: str) -> None:
        customer = self.model.hold_owner[ref]
        key = f"release:{self.run}:{self.operations}"

        movement = await self.call("release_hold", user_id=customer, ref=ref, idempotency_key=key)
        assert movement.result["amount"] == self.model.held[ref]
        self.model.available[customer] += self.model.held[ref]
        self.model.held[ref] = 0

    async def request_payout(self, provider: uuid.UUID, amount: int) -> None:
        payout_id = uuid.uuid4()
        key = f"payout_request:{payout_id}"

        try:
            await self.call(
                "request_payout",
                provider_user_id=provider,
                amount_micro=amount,
                payout_id=payout_id,
                idempotency_key=key,
            )
        except InsufficientFunds:
            assert self.model.earnings[provider] < amount
            self.refusals += 1
            return
        self.model.earnings[provider] -= amount
        self.model.pending[provider] += amount
        self.model.payouts[payout_id] = (provider, amount)

    async def finish_payout(self, payout_id: uuid.UUID, paid: bool) -> None:
        provider, amount = self.model.payouts.pop(payout_id)

        if paid:
            await self.call(
                "complete_payout",
                provider_user_id=provider,
                amount_micro=amount,
                payout_id=payout_id,
                signature=f"payout-{payout_id}",
                idempotency_key=f"payout_complete:{payout_id}",
            )
        else:
            await self.call(
                "reverse_payout",
                provider_user_id=provider,
                amount_micro=amount,
                payout_id=payout_id,
                reason="expired",
                idempotency_key=f"payout_reverse:{payout_id}",
            )
        self.model.pending[provider] -= amount
        if paid:
            self.model.paid_out += amount
        else:
            self.model.earnings[provider] += amount

    # --- a random step -------------------------------------------------------------------
    async def random_step(self) -> None:
        rng = self.rng
        roll = rng.random()
        open_holds = [r for r, v in self.model.held.items() if v > 0]
        if roll < 0.15:
            await self.deposit(rng.choice(self.customers), rng.randrange(10_000_000))
        elif roll < 0.2:
            await self.grant(rng.choice(self.customers), rng.randrange(1, 50_000))
        elif roll < 0.35:
            await self.hold(rng.choice(self.customers), rng.randrange(1, 80_000))
        elif roll < 0.42 and open_holds:
            ref = rng.choice(open_holds)
            await self.hold(self.model.hold_owner[ref], rng.randrange(1, 20_000), ref)
        elif roll < 0.7 and open_holds:
            await self.settle(
                rng.choice(open_holds),
                rng.choice(self.providers),
                rng.randrange(0, 40_000),
                rng.choice((0, 500, 1000, 2500)),
            )
        elif roll < 0.8 and open_holds:
            await self.release(rng.choice(open_holds))
        elif roll < 0.9:
            await self.request_payout(rng.choice(self.providers), rng.randrange(1, 30_000))
        elif self.model.payouts:
            await self.finish_payout(rng.choice(list(self.model.payouts)), rng.random() < 0.7)

    # --- invariants ----------------------------------------------------------------------
    async def check(self, *, exact: bool = True) -> list[str]:
        """Every invariant, in SQL; returns the violations (empty when sound)."""
        problems: list[str] = []
        async with self.sessionmaker() as s:
            total = await s.scalar(text("SELECT coalesce(sum(amount), 0) FROM ledger_postings"))
            if total != 0:
                problems.append(f"postings sum to {total}")
            unbalanced = await s.scalar(
                text(
                    "SELECT count(*) FROM (SELECT transaction_id FROM ledger_postings"
                    " GROUP BY transaction_id HAVING sum(amount) <> 0) t"
                )
            )
            if unbalanced:
                problems.append(f"{unbalanced} unbalanced transactions")
            negative = await s.scalar(
                text(
                    "SELECT count(*) FROM ledger_accounts WHERE NOT allow_negative AND balance < 0"
                )
            )
            if negative:
                problems.append(f"{negative} negative accounts")
            drift = await s.scalar(
                text(
                    "SELECT count(*) FROM ledger_accounts a LEFT JOIN (SELECT account_id,"
                    " sum(amount) AS s FROM ledger_postings GROUP BY account_id) p"
                    " ON p.account_id = a.id WHERE a.balance <> coalesce(p.s, 0)"
                )
            )
            if drift:
                problems.append(f"{drift} balances differ from their postings")
            doubled = await s.scalar(
                text(
                    "SELECT count(*) FROM (SELECT refs->>'signature' FROM ledger_transactions"
                    " WHERE kind = 'deposit' GROUP BY 1 HAVING count(*) > 1) d"
                )
            )
            if doubled:
                problems.append(f"{doubled} signatures credited twice")
            if exact:
                problems += await self._compare_model(s)
        return problems

    async def _compare_model(self, s: AsyncSession) -> list[str]:
        problems: list[str] = []
        ids = [*self.customers, *self.providers]
        rows = (
            await s.execute(
                text(
                    "SELECT owner_user_id, kind, ref, balance FROM ledger_accounts"
                    " WHERE owner_user_id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        ).all()
        actual: dict[tuple[Any, str, str], int] = {(r[0], r[1], r[2]): int(r[3]) for r in rows}
        m = self.model
        for c in self.customers:
            if actual.get((c, "customer_available", ""), 0) != m.available[c]:
                problems.append(
                    f"available of {c}: {actual.get((c, 'customer_available', ''))}"
                    f" != {m.available[c]}"
                )
        for ref, amount in m.held.items():
            got = actual.get((m.hold_owner[ref], "customer_held", ref), 0)
            if got != amount:
                problems.append(f"hold {ref}: {got} != {amount}")
        for p in self.providers:
            if actual.get((p, "provider_earnings", ""), 0) != m.earnings[p]:
                problems.append(f"earnings of {p}")
            if actual.get((p, "provider_pending_payout", ""), 0) != m.pending[p]:
                problems.append(f"pending payout of {p}")
        owned = sum(actual.values())
        fees = int(
            await s.scalar(
                text(
                    "SELECT coalesce(sum(balance), 0) FROM ledger_accounts"
                    " WHERE kind = 'platform_fees'"
                )
            )
            or 0
        )
        if fees - self.base_fees != m.fees:
            problems.append(f"fees {fees - self.base_fees} != {m.fees}")
        # Conservation: what customers, providers and the platform hold is what came in
        # (deposits and grants) less what left (payouts).
        if owned + (fees - self.base_fees) != m.deposited + m.granted - m.paid_out:
            problems.append(
                f"conservation: {owned} + {fees - self.base_fees}"
                f" != {m.deposited} + {m.granted} - {m.paid_out}"
            )
        return problems

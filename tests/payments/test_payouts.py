"""Payouts whose outcome is unknown: paid once, whatever the RPC or the process does.

A send that times out, a sender killed between any two steps, a blockhash that expires:
the payout stays ``sent`` with its signature until the chain says, and the USDC that left
the hot wallet always equals the ledger's paid payouts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from solders.pubkey import Pubkey
from sqlalchemy import func, select, text, update

from tesai.billing import service as ledger
from tesai.billing.errors import InsufficientFunds
from tesai.billing.ledger import balance_of
from tesai.chain.base import SendPhase, SignedTransfer
from tesai.chain.rpc import RpcChainClient
from tesai.kit.time import utcnow
from tesai.payments import payouts
from tesai.payments.models import Payout
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.billing.conftest import NewUser
from tests.chain.rpc_endpoint import RpcEndpoint
from tests.fixtures.auth import MakeUser
from tests.payments.conftest import Chain

USDC = 1_000_000


@dataclass
class Provider:
    id: uuid.UUID
    ata: Pubkey
    """The wallet's USDC account: what arrived on chain."""


async def earn(runtime: Runtime, provider: uuid.UUID, customer: uuid.UUID, amount: int) -> None:
    """``amount`` of settled usage in the provider's withdrawable earnings."""
    async with runtime.sessionmaker() as s, s.begin():
        await ledger.admin_grant_credit(
            s,
            admin_user_id=None,
            user_id=customer,
            amount_micro=amount,
            reason="t",
            idempotency_key=f"g-{provider}",
        )
        await ledger.place_hold(
            s, user_id=customer, amount_micro=amount, ref="c", idempotency_key=f"h-{provider}"
        )
        await ledger.settle_usage(
            s,
            user_id=customer,
            ref="c",
            provider_user_id=provider,
            provider_amount_micro=amount,
            fee_bps=0,
            idempotency_key=f"s-{provider}",
        )


async def provider_with(
    runtime: Runtime,
    s: Settings,
    chain: Chain,
    provider: uuid.UUID,
    earnings: int,
    customer: uuid.UUID,
) -> Provider:
    """A provider with ``earnings`` withdrawable and a proved wallet with a USDC account."""
    await earn(runtime, provider, customer, earnings)
    owner, ata = chain.wallet()
    nonce, message = await payouts.wallet_challenge(runtime.cache, provider, str(owner.pubkey()))
    async with runtime.sessionmaker() as session, session.begin():
        await payouts.register_wallet(
            session,
            runtime.cache,
            s,
            user_id=provider,
            address=str(owner.pubkey()),
            nonce=nonce,
            signature=str(owner.sign_message(message.encode())),
        )
    return Provider(provider, ata)


async def request(
    runtime: Runtime, s: Settings, provider: Provider, amount: int, key: str
) -> Payout:
    async with runtime.sessionmaker() as session, session.begin():
        return await payouts.request_payout(
            session, s, user_id=provider.id, amount_micro=amount, idempotency_key=key
        )


async def row(runtime: Runtime, payout_id: uuid.UUID) -> Payout:
    async with runtime.sessionmaker() as session:
        found = await session.get(Payout, payout_id)
        assert found is not None
        return found


async def balances(runtime: Runtime, provider: Provider) -> tuple[int, int]:
    """(withdrawable earnings, pending payout) in the ledger."""
    async with runtime.sessionmaker() as s:
        return (
            await balance_of(s, ledger.earnings(provider.id)),
            await balance_of(s, ledger.pending_payout(provider.id)),
        )


async def paid_out(runtime: Runtime, provider: Provider) -> int:
    async with runtime.sessionmaker() as s:
        total = await s.scalar(
            select(func.coalesce(func.sum(Payout.amount_micro), 0)).where(
                Payout.user_id == provider.id, Payout.status == "paid"
            )
        )
        return int(total or 0)


@pytest.fixture
async def provider(
    runtime: Runtime, money_settings: Settings, chain: Chain, new_user: NewUser
) -> Provider:
    customer, provider = await new_user(), await new_user(("provider",))
    return await provider_with(runtime, money_settings, chain, provider, 10 * USDC, customer)


@pytest.fixture
async def endpoint(chain: Chain) -> AsyncIterator[RpcEndpoint]:
    ep = RpcEndpoint(chain.client)
    await ep.start()
    yield ep
    await ep.stop()


async def test_payout_with_timed_out_send_is_not_paid_twice(
    runtime: Runtime,
    money_settings: Settings,
    chain: Chain,
    provider: Provider,
    endpoint: RpcEndpoint,
) -> None:
    rpc = RpcChainClient(endpoint.url, timeout_s=0.5)
    first = await request(runtime, money_settings, provider, 10 * USDC, "w1")
    endpoint.faults.send_delay_s = 1.5  # the node runs the transfer, answers too late
    await payouts.process_payouts(runtime.sessionmaker, money_settings, rpc)
    endpoint.faults.send_delay_s = 0

    # The provider, seeing no payout, asks again: the earnings are still on their way.
    with pytest.raises(InsufficientFunds):
        await request(runtime, money_settings, provider, 10 * USDC, "w2")
    for _ in range(2):
        await payouts.process_payouts(runtime.sessionmaker, money_settings, rpc)
    await rpc.close()

    paid = await row(runtime, first.id)
    assert paid.status == "paid"
    assert endpoint.sent == [paid.signature]
    assert await chain.client.token_balance(str(provider.ata)) == 10 * USDC
    assert await paid_out(runtime, provider) == 10 * USDC
    assert await balances(runtime, provider) == (0, 0)


async def test_payout_whose_send_never_went_out_is_reversed_only_once_it_cannot_land(
    runtime: Runtime, money_settings: Settings, chain: Chain, provider: Provider
) -> None:
    async def stalled_request(phase: SendPhase, signature: str) -> None:
        if phase == "before":
            await asyncio.sleep(1)

    chain.client.send_timeout_s, chain.client.send_hook = 0.05, stalled_request
    payout = await request(runtime, money_settings, provider, 4 * USDC, "w")
    report = await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    assert (report.sent, report.unknown, report.reversed) == (1, 1, 0)
    chain.client.send_hook = None

    sent = await row(runtime, payout.id)
    assert sent.status == "sent"
    assert "outcome unknown" in sent.reason
    assert sent.signature is not None
    assert sent.blockhash == str(chain.client.svm.latest_blockhash())
    assert sent.last_valid_block_height == await chain.client.block_height()
    # Not landed yet, but it still could: the payout waits, and is never signed again.
    await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    waiting = await row(runtime, payout.id)
    assert (waiting.status, waiting.signature) == ("sent", sent.signature)
    assert await balances(runtime, provider) == (6 * USDC, 4 * USDC)

    chain.client.expire_blockhash()  # past its last valid block height: it can never land
    report = await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    assert report.reversed == 1
    reversed_ = await row(runtime, payout.id)
    assert reversed_.status == "reversed"
    assert "never landed" in reversed_.reason
    assert await balances(runtime, provider) == (10 * USDC, 0)
    assert await chain.client.token_balance(str(provider.ata)) == 0


class Killed(BaseException):
    """The sender's process dies here (not an ``Exception``: nothing catches it)."""


@pytest.mark.parametrize(
    ("crash", "lands"),
    [("after_claim", True), ("after_signing", False), ("after_landing", True)],
)
async def test_sender_killed_at_any_step_pays_at_most_once(
    runtime: Runtime,
    money_settings: Settings,
    chain: Chain,
    provider: Provider,
    crash: str,
    lands: bool,
) -> None:
    client = chain.client
    prepare = client.prepare_transfer

    async def die_before_signing(**kwargs: object) -> SignedTransfer:
        raise Killed

    async def die(phase: SendPhase, signature: str) -> None:
        if (phase, crash) in (("before", "after_signing"), ("after", "after_landing")):
            raise Killed

    if crash == "after_claim":
        client.prepare_transfer = die_before_signing  # type: ignore[method-assign]
    client.send_hook = die
    payout = await request(runtime, money_settings, provider, 3 * USDC, "w")
    with pytest.raises(Killed):
        await payouts.process_payouts(runtime.sessionmaker, money_settings, client)
    client.prepare_transfer, client.send_hook = prepare, None  # type: ignore[method-assign]
    landed_before_restart = await client.token_balance(str(provider.ata))

    # Restarted while the dead sender's lease still runs: the payout is left alone.
    await payouts.process_payouts(runtime.sessionmaker, money_settings, client)
    assert (await row(runtime, payout.id)).status == "sending"
    assert await client.token_balance(str(provider.ata)) == landed_before_restart

    async with runtime.sessionmaker() as s, s.begin():  # the lease runs out
        await s.execute(
            update(Payout).where(Payout.id == payout.id).values(lock_expires_at=utcnow())
        )
    await payouts.process_payouts(runtime.sessionmaker, money_settings, client)
    if not lands:
        assert (await row(runtime, payout.id)).status == "sent"  # waits for expiry
        client.expire_blockhash()
        await payouts.process_payouts(runtime.sessionmaker, money_settings, client)

    final = await row(runtime, payout.id)
    assert final.status == ("paid" if lands else "reversed")
    assert await client.token_balance(str(provider.ata)) == (3 * USDC if lands else 0)
    assert await paid_out(runtime, provider) == await client.token_balance(str(provider.ata))
    assert await balances(runtime, provider) == ((7 if lands else 10) * USDC, 0)


async def test_payout_sent_by_an_older_version_goes_to_review_not_reversed(
    runtime: Runtime, money_settings: Settings, chain: Chain, provider: Provider
) -> None:
    payout = await request(runtime, money_settings, provider, 2 * USDC, "w")
    async with runtime.sessionmaker() as s, s.begin():  # no blockhash was stored back then
        await s.execute(
            update(Payout).where(Payout.id == payout.id).values(status="sent", signature="1" * 88)
        )
        await s.execute(
            text("UPDATE payouts SET updated_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": payout.id},
        )
    report = await payouts.process_payouts(runtime.sessionmaker, money_settings, chain.client)
    assert report.review == 1
    assert (await row(runtime, payout.id)).status == "needs_review"
    assert await balances(runtime, provider) == (8 * USDC, 2 * USDC)


@pytest.fixture
async def api(
    client: httpx.AsyncClient, money_settings: Settings, runtime: Runtime
) -> httpx.AsyncClient:
    runtime.settings = money_settings
    return client


async def _requests_waiting_on_a_lock(runtime: Runtime, n: int) -> None:
    for _ in range(500):
        async with runtime.sessionmaker() as s:
            waiting = await s.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
        if waiting is not None and waiting >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} requests never queued on the provider's accounts")


async def test_twin_payout_requests_with_one_key_get_one_payout(
    api: httpx.AsyncClient,
    runtime: Runtime,
    money_settings: Settings,
    chain: Chain,
    make_user: MakeUser,
    new_user: NewUser,
) -> None:
    user, headers = await make_user(roles=("provider",))
    provider = await provider_with(
        runtime, money_settings, chain, user.id, 10 * USDC, await new_user()
    )

    async def race(*amounts: int, key: str) -> list[httpx.Response]:
        # Both requests get past their checks before either commits: the provider's
        # earnings account is held until both wait on it.
        async with runtime.sessionmaker() as holder, holder.begin():
            await holder.execute(
                text(
                    "SELECT id FROM ledger_accounts WHERE owner_user_id = :u "
                    "AND kind = 'provider_earnings' FOR UPDATE"
                ),
                {"u": provider.id},
            )
            calls = [
                asyncio.create_task(
                    api.post(
                        "/api/v1/provider/payouts",
                        json={"amount_micro": amount},
                        headers={**headers, "Idempotency-Key": key},
                    )
                )
                for amount in amounts
            ]
            await _requests_waiting_on_a_lock(runtime, len(amounts))
        return list(await asyncio.gather(*calls))

    same = await race(2 * USDC, 2 * USDC, key="k1")
    assert [r.status_code for r in same] == [201, 201], [r.text for r in same]
    assert same[0].json()["id"] == same[1].json()["id"]

    other = await race(3 * USDC, 4 * USDC, key="k2")
    assert sorted(r.status_code for r in other) == [201, 409], [r.text for r in other]
    won = next(r for r in other if r.status_code == 201).json()
    lost = next(r for r in other if r.status_code == 409).json()
    assert lost["code"] == "idempotency_key_reused"

    async with runtime.sessionmaker() as s:
        rows = (await s.scalars(select(Payout).where(Payout.user_id == provider.id))).all()
    assert sorted(p.amount_micro for p in rows) == sorted([2 * USDC, won["amount_micro"]])
    assert await balances(runtime, provider) == (
        10 * USDC - 2 * USDC - won["amount_micro"],
        2 * USDC + won["amount_micro"],
    )

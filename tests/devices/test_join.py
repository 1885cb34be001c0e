"""Joining and device credentials, through the HTTP API with the real cache and database."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import update

from tesai.devices import keys
from tesai.devices.deps import forget_local, hash_token
from tesai.devices.models import DeviceCredential, JoinToken
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tests.devices.conftest import Pool, beat
from tests.fixtures.auth import MakeUser


async def test_create_device_gives_a_join_command(pool: Pool) -> None:
    created = await pool.create("gpu-box-1")
    token = created["join_token"]
    assert len(token) >= 32
    assert created["join_command"].endswith(f"--token {token}")
    assert created["join_command"].startswith("tesai agent --server http")
    assert created["device"]["status"] == "pending"


async def test_join_gives_a_credential_and_starts_verification(pool: Pool) -> None:
    joined = await pool.joined()
    assert joined.token.startswith("tesai_dev_")
    assert joined.join["heartbeat_interval_s"] == 5.0
    assert joined.verify_args is not None
    assert await pool.status(joined.device_id) == "verifying"


async def test_bad_join_token(pool: Pool) -> None:
    r = await pool.join("tesai_join_nope")
    assert r.status_code == 401
    assert r.json()["code"] == "join_token_invalid"


async def test_reused_join_token(pool: Pool) -> None:
    created = await pool.create()
    assert (await pool.join(created["join_token"])).status_code == 200
    r = await pool.join(created["join_token"])
    assert r.status_code == 401
    assert r.json()["code"] == "join_token_used"


async def test_the_same_agent_may_retry_a_join_whose_answer_it_lost(pool: Pool) -> None:
    created = await pool.create()
    first = await pool.join(created["join_token"], instance="agent-a")
    assert first.status_code == 200
    retry = await pool.join(created["join_token"], instance="agent-a")
    assert retry.status_code == 200
    assert retry.json()["device_id"] == first.json()["device_id"]
    # The first answer's credential is replaced; another installation cannot reuse the token.
    old = {"Authorization": f"Bearer {first.json()['device_token']}"}
    new = {"Authorization": f"Bearer {retry.json()['device_token']}"}
    assert (
        await pool.client.post("/api/v1/agent/heartbeat", json=beat(), headers=old)
    ).status_code == 401
    assert (
        await pool.client.post("/api/v1/agent/heartbeat", json=beat(), headers=new)
    ).status_code == 200
    other = await pool.join(created["join_token"], instance="agent-b")
    assert other.status_code == 401
    assert other.json()["code"] == "join_token_used"


async def test_expired_join_token(pool: Pool, runtime: Runtime) -> None:
    created = await pool.create()
    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(JoinToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = await pool.join(created["join_token"])
    assert r.status_code == 401
    assert r.json()["code"] == "join_token_expired"


async def test_new_join_token_replaces_unused_one(pool: Pool, client: httpx.AsyncClient) -> None:
    created = await pool.create()
    device_id = created["device"]["id"]
    r = await client.post(f"/api/v1/provider/devices/{device_id}/join-token", headers=pool.provider)
    assert r.status_code == 200
    assert (await pool.join(created["join_token"])).json()["code"] == "join_token_invalid"
    assert (await pool.join(r.json()["join_token"])).status_code == 200


async def test_agent_rotation_old_token_stops_working(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined()
    r = await client.post("/api/v1/agent/credential/rotate", headers=joined.headers)
    assert r.status_code == 200
    new = {"Authorization": f"Bearer {r.json()['device_token']}"}
    old = await client.post("/api/v1/agent/heartbeat", json=beat(), headers=joined.headers)
    assert old.status_code == 401
    assert old.json()["code"] == "device_token_invalid"
    assert (
        await client.post("/api/v1/agent/heartbeat", json=beat(), headers=new)
    ).status_code == 200


async def test_provider_rotation_revokes_and_gives_new_join_command(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined()
    r = await client.post(
        f"/api/v1/provider/devices/{joined.device_id}/credential/rotate", headers=pool.provider
    )
    assert r.status_code == 200
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(), headers=joined.headers)
    assert hb.status_code == 401
    rejoin = await pool.join(r.json()["join_token"])
    assert rejoin.status_code == 200
    assert rejoin.json()["device_id"] == str(joined.device_id)


async def test_device_token_cannot_reach_provider_endpoints(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    joined = await pool.joined()
    r = await client.get("/api/v1/provider/devices", headers=joined.headers)
    assert r.status_code == 401
    r = await client.get(f"/api/v1/provider/devices/{joined.device_id}", headers=joined.headers)
    assert r.status_code == 401


async def test_user_token_cannot_reach_agent_endpoints(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    r = await client.post("/api/v1/agent/heartbeat", json=beat(), headers=pool.provider)
    assert r.status_code == 401
    assert r.json()["code"] == "device_token_invalid"
    assert (await client.post("/api/v1/agent/heartbeat", json=beat())).status_code == 401


async def test_device_cannot_touch_another_devices_challenge_or_commands(
    pool: Pool, client: httpx.AsyncClient
) -> None:
    a = await pool.joined(name="a")
    b = await pool.joined(name="b")
    assert a.verify_args is not None
    assert b.verify_args is not None
    # B asks for A's challenge: not found for B.
    r = await client.post(
        "/api/v1/agent/verification/start",
        json={"challenge_id": a.verify_args["challenge_id"]},
        headers=b.headers,
    )
    assert r.status_code == 404
    assert r.json()["code"] == "challenge_not_found"
    # B acknowledges A's command: A still gets it.
    cmd_id = (await client.post("/api/v1/agent/heartbeat", json=beat(2), headers=a.headers)).json()[
        "commands"
    ][0]["id"]
    ack = beat(3, acked_commands=[cmd_id])
    assert (
        await client.post("/api/v1/agent/heartbeat", json=ack, headers=b.headers)
    ).status_code == 200
    again = await client.post("/api/v1/agent/heartbeat", json=beat(4), headers=a.headers)
    assert [c["id"] for c in again.json()["commands"]] == [cmd_id]


async def test_another_providers_device_is_not_found(
    pool: Pool, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    created = await pool.create()
    _, other = await make_user(roles=("provider",))
    r = await client.get(f"/api/v1/provider/devices/{created['device']['id']}", headers=other)
    assert r.status_code == 404
    r = await client.delete(f"/api/v1/provider/devices/{created['device']['id']}", headers=other)
    assert r.status_code == 404


async def test_customer_cannot_create_devices(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    _, customer = await make_user(roles=("customer",))
    r = await client.post("/api/v1/provider/devices", json={"name": "x"}, headers=customer)
    assert r.status_code == 403


async def test_expired_token_can_only_rotate_within_grace(
    pool: Pool, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    joined = await pool.joined()
    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(DeviceCredential).values(expires_at=utcnow() - timedelta(days=2)))
    await runtime.cache.delete(keys.credential(hash_token(joined.token)))
    forget_local(runtime.state)  # and this process's copy
    hb = await client.post("/api/v1/agent/heartbeat", json=beat(), headers=joined.headers)
    assert hb.status_code == 401
    assert hb.json()["code"] == "device_token_expired"
    r = await client.post("/api/v1/agent/credential/rotate", headers=joined.headers)
    assert r.status_code == 200
    new = {"Authorization": f"Bearer {r.json()['device_token']}"}
    assert (
        await client.post("/api/v1/agent/heartbeat", json=beat(), headers=new)
    ).status_code == 200
    # Past the grace, only a new join token helps.
    async with runtime.sessionmaker.begin() as s:
        await s.execute(update(DeviceCredential).values(expires_at=utcnow() - timedelta(days=8)))
    await runtime.cache.delete(keys.credential(hash_token(r.json()["device_token"])))
    forget_local(runtime.state)  # and this process's copy
    r = await client.post("/api/v1/agent/credential/rotate", headers=new)
    assert r.status_code == 401

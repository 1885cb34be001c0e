"""Opening the Ray dashboard in a browser tab: the one-time ticket and the read-only cookie,
both on the dashboard origin (here ``http://localhost:8000``, the loopback twin of the
default ``public_url``), which serves nothing but the Ray proxy.

The head is a stand-in (an httpx mock transport in place of the proxy's pooled client) that
records what reaches it; the real dashboard through the proxy is loaded by the browser test
(tests/web/test_console_e2e.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import update

from tesai.auth.tokens import issue_access_token, runtime_signing_key
from tesai.clusters import dashboard
from tesai.clusters.models import Cluster, ClusterNode, ClusterStatus, NodeRole, NodeState
from tesai.kit.time import utcnow
from tesai.runtime import Runtime
from tesai.settings import Settings
from tests.clusters.conftest import AddDevice, Grant

HEAD = "http://127.0.0.1:8265"
COOKIE = dashboard.COOKIE_NAME

Seen = list[httpx.Request]


@pytest.fixture
async def dash(client: httpx.AsyncClient, runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A browser tab on the dashboard origin: the same app, another ``Host``."""
    origin = runtime.settings.dashboard_origin
    assert origin == "http://localhost:8000"
    async with httpx.AsyncClient(transport=client._transport, base_url=origin) as c:
        yield c


@pytest.fixture
def head(runtime: Runtime) -> Seen:
    """A fake head dashboard; returns the requests that reached it."""
    seen: Seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/":
            return httpx.Response(200, html="<title>Ray Dashboard</title>")
        return httpx.Response(200, json={"path": request.url.path})

    runtime.state["ray_http"] = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return seen


async def running_cluster(
    client: httpx.AsyncClient,
    runtime: Runtime,
    headers: dict[str, str],
    add_device: AddDevice,
    *,
    ends_in: timedelta | None = None,
) -> uuid.UUID:
    """A cluster of the customer whose head reports a dashboard (as a joined agent leaves it)."""
    await add_device(gpu_model=None, gpus=0)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 7200}}, headers=headers
    )
    assert r.status_code == 201, r.text
    cid = uuid.UUID(r.json()["id"])
    async with runtime.sessionmaker.begin() as s:
        values: dict[str, object] = {"status": ClusterStatus.running}
        if ends_in is not None:
            values["ends_at"] = utcnow() + ends_in
        await s.execute(update(Cluster).where(Cluster.id == cid).values(**values))
        await s.execute(
            update(ClusterNode)
            .where(ClusterNode.cluster_id == cid, ClusterNode.role == NodeRole.head)
            .values(state=NodeState.running, dashboard_url=HEAD)
        )
    return cid


async def open_session(
    client: httpx.AsyncClient, cid: uuid.UUID, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(f"/api/v1/clusters/{cid}/dashboard-session", headers=headers)


async def ticket_url(client: httpx.AsyncClient, cid: uuid.UUID, headers: dict[str, str]) -> str:
    r = await open_session(client, cid, headers)
    assert r.status_code == 200, r.text
    return str(r.json()["url"])


def problem(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return str(r.json()["code"])


Funded = Callable[[], Awaitable[tuple[uuid.UUID, dict[str, str]]]]


@pytest.fixture
def funded(make_user, grant: Grant) -> Funded:  # type: ignore[no-untyped-def]
    async def make() -> tuple[uuid.UUID, dict[str, str]]:
        user, headers = await make_user()
        await grant(user.id, 100_000_000)
        return user.id, headers

    return make


async def test_a_ticket_opens_the_dashboard_with_a_read_only_cookie_for_one_cluster(
    client: httpx.AsyncClient,
    dash: httpx.AsyncClient,
    runtime: Runtime,
    funded: Funded,
    add_device: AddDevice,
    head: Seen,
) -> None:
    _, headers = await funded()
    cid = await running_cluster(client, runtime, headers, add_device, ends_in=timedelta(hours=2))
    url = await ticket_url(client, cid, headers)
    root = f"/api/v1/clusters/{cid}/ray/"
    assert url.startswith(f"http://localhost:8000{root}?ticket=")

    # On the console's origin the ticket counts for nothing.
    path = url.removeprefix("http://localhost:8000")
    assert problem(await client.get(path), 401) == "token_invalid"
    # Opening the URL sets the cookie and sends the browser to the dashboard without the ticket.
    r = await dash.get(url)
    assert r.status_code == 200, r.text
    assert f'content="0;url={root}"' in r.text  # moves on by itself, without the ticket
    set_cookie = r.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    for attr in ("HttpOnly", "SameSite=strict", f"Path={root}", "Max-Age=3600"):
        assert attr.lower() in set_cookie.lower(), set_cookie
    assert "secure" not in set_cookie.lower()  # plain http here; https adds it
    assert head == []  # nothing reached Ray yet

    # The cookie (sent by the tab's jar for this path only) reads the dashboard.
    page = await dash.get(root)
    assert page.status_code == 200
    assert "Ray Dashboard" in page.text
    assert (await dash.get(f"{root}api/version")).json() == {"path": "/api/version"}
    # Ray sees its own token, never our cookie.
    assert head[-1].headers["authorization"].startswith("Bearer ")
    assert "cookie" not in head[-1].headers
    # The cookie is no credential on the console's origin.
    r = await client.get(root, headers={"Cookie": f"{COOKIE}={dash.cookies[COOKIE]}"})
    assert problem(r, 401) == "token_invalid"
    # The dashboard origin answers nothing but the proxy: not the API, not the console.
    for other in ("/api/v1/auth/me", "/", "/app", f"/api/v1/clusters/{cid}"):
        assert problem(await dash.get(other, headers=headers), 404) == "not_found"

    # A ticket works once.
    again = await dash.get(url)
    assert problem(again, 401) == "token_invalid"

    # Writes refuse the cookie (CSRF): the Job API keeps needing the Authorization header.
    before = len(head)
    for method in ("POST", "DELETE", "PUT"):
        r = await dash.request(method, f"{root}api/jobs/", json={"entrypoint": "echo"})
        assert problem(r, 403) == "dashboard_session_read_only"
    assert len(head) == before
    r = await client.post(f"{root}api/jobs/", json={"entrypoint": "echo"}, headers=headers)
    assert r.status_code == 200
    assert len(head) == before + 1
    # What the head sends never runs as a page on the console's origin.
    page = await client.get(root, headers=headers)
    assert "sandbox" in page.headers.get_list("content-security-policy")  # with the console's
    assert (await dash.get(root)).headers["content-security-policy"] == "frame-ancestors 'none'"


async def test_cookie_is_bound_to_its_cluster_and_never_outlives_it(
    client: httpx.AsyncClient,
    dash: httpx.AsyncClient,
    runtime: Runtime,
    funded: Funded,
    add_device: AddDevice,
    head: Seen,
) -> None:
    _, headers = await funded()
    first = await running_cluster(
        client, runtime, headers, add_device, ends_in=timedelta(minutes=10)
    )
    second = await running_cluster(client, runtime, headers, add_device)
    r = await dash.get(await ticket_url(client, first, headers))
    assert r.status_code == 200
    max_age = int(r.headers["set-cookie"].split("Max-Age=")[1].split(";")[0])
    assert 590 <= max_age <= 600  # the cluster ends in 10 minutes

    cookie = dash.cookies.get(COOKIE)
    assert cookie is not None
    # The same cookie presented on another cluster's proxy (of the same customer): refused.
    dash.cookies.clear()
    r = await dash.get(
        f"/api/v1/clusters/{second}/ray/api/version", headers={"Cookie": f"{COOKIE}={cookie}"}
    )
    assert problem(r, 401) == "token_invalid"
    # So is a ticket of one cluster opened on the other's proxy.
    other = parse_qs(urlsplit(await ticket_url(client, first, headers)).query)
    r = await dash.get(f"/api/v1/clusters/{second}/ray/", params={"ticket": other["ticket"][0]})
    assert problem(r, 401) == "token_invalid"
    assert head == []


async def test_forged_expired_and_foreign_credentials_are_refused(
    client: httpx.AsyncClient,
    dash: httpx.AsyncClient,
    runtime: Runtime,
    funded: Funded,
    add_device: AddDevice,
    head: Seen,
) -> None:
    user_id, headers = await funded()
    cid = await running_cluster(client, runtime, headers, add_device)
    root = f"/api/v1/clusters/{cid}/ray/"
    key = runtime_signing_key(runtime.state, runtime.settings)
    now = int(utcnow().timestamp())

    expired = dashboard.issue_ticket(key, runtime.settings, user_id, cid, None, now - 120)
    assert problem(await dash.get(root, params={"ticket": expired}), 401) == "token_invalid"
    good = dashboard.issue_ticket(key, runtime.settings, user_id, cid, None, now)
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert problem(await dash.get(root, params={"ticket": forged}), 401) == "token_invalid"
    assert problem(await dash.get(root, params={"ticket": "nonsense"}), 401) == "token_invalid"
    # An access token is no ticket, and no cookie either (and the reverse).
    access = issue_access_token(key, runtime.settings, user_id)
    assert problem(await dash.get(root, params={"ticket": access}), 401) == "token_invalid"
    jar = {"Cookie": f"{COOKIE}={access}"}
    assert problem(await dash.get(root, headers=jar), 401) == "token_invalid"
    jar = {"Cookie": f"{COOKIE}={good}"}  # a ticket is not a cookie
    assert problem(await dash.get(root, headers=jar), 401) == "token_invalid"
    r = await dash.get(root, headers={"Authorization": f"Bearer {good}"})
    assert problem(r, 401) == "token_invalid"
    # An expired cookie.
    claims = dashboard.verify_ticket(key, runtime.settings, good, cid)
    stale = dashboard.issue_session(key, runtime.settings, claims, now - 1)
    r = await dash.get(root, headers={"Cookie": f"{COOKIE}={stale}"})
    assert problem(r, 401) == "token_invalid"
    assert head == []

    # Another customer: no session for this cluster, and their own cookie does not reach it.
    stranger_id, stranger = await funded()
    assert problem(await open_session(client, cid, stranger), 404) == "cluster_not_found"
    theirs = dashboard.issue_ticket(key, runtime.settings, stranger_id, cid, None, now)
    assert problem(await dash.get(root, params={"ticket": theirs}), 404) == "cluster_not_found"
    claims = dashboard.verify_ticket(key, runtime.settings, theirs, cid)
    cookie = dashboard.issue_session(key, runtime.settings, claims, now + 60)
    r = await dash.get(root, headers={"Cookie": f"{COOKIE}={cookie}"})
    assert problem(r, 404) == "cluster_not_found"
    # No credentials at all.
    assert problem(await open_session(client, cid, {}), 401) == "unauthorized"
    assert problem(await dash.get(root), 401) == "unauthorized"
    assert head == []


async def test_no_session_before_the_head_is_up_and_none_after_logout(
    client: httpx.AsyncClient,
    dash: httpx.AsyncClient,
    runtime: Runtime,
    funded: Funded,
    add_device: AddDevice,
    head: Seen,
) -> None:
    _, headers = await funded()
    await add_device(gpu_model=None, gpus=0)
    r = await client.post(
        "/api/v1/clusters", json={"request": {"nodes": 1, "duration_s": 3600}}, headers=headers
    )
    pending = r.json()["id"]
    assert problem(await open_session(client, pending, headers), 409) == "cluster_not_ready"

    cid = await running_cluster(client, runtime, headers, add_device)
    assert (await dash.get(await ticket_url(client, cid, headers))).status_code == 200
    root = f"/api/v1/clusters/{cid}/ray/"
    assert (await dash.get(root)).status_code == 200
    # Logging out ends the dashboard cookie with the session it came from.
    assert (await client.post("/api/v1/auth/logout", headers=headers)).status_code == 204
    assert problem(await dash.get(root), 401) == "token_invalid"


async def test_an_api_key_uses_the_header_and_cannot_open_a_browser_session(
    client: httpx.AsyncClient, runtime: Runtime, funded: Funded, add_device: AddDevice, head: Seen
) -> None:
    _, headers = await funded()
    cid = await running_cluster(client, runtime, headers, add_device)
    r = await client.post(
        "/api/v1/auth/api-keys", json={"name": "ci", "scopes": ["read"]}, headers=headers
    )
    assert r.status_code == 201, r.text
    key = {"Authorization": f"Bearer {r.json()['key']}"}
    assert problem(await open_session(client, cid, key), 403) == "dashboard_needs_sign_in"
    r = await client.get(f"/api/v1/clusters/{cid}/ray/api/version", headers=key)
    assert r.status_code == 200
    assert len(head) == 1


@pytest.mark.parametrize(
    ("public_url", "dashboard_url", "origin"),
    [
        ("http://127.0.0.1:8000", None, "http://localhost:8000"),
        ("http://localhost:9000", None, "http://127.0.0.1:9000"),
        ("https://tesai.example.com", None, None),  # no safe default: set TESAI_DASHBOARD_URL
        ("https://tesai.example.com", "https://dash.example.com/x", "https://dash.example.com"),
        ("https://tesai.example.com", "https://TESAI.example.com", None),  # the console's own
    ],
)
def test_the_dashboard_origin_is_never_the_consoles(
    public_url: str, dashboard_url: str | None, origin: str | None
) -> None:
    settings = Settings(public_url=public_url, dashboard_url=dashboard_url)
    assert settings.dashboard_origin == origin

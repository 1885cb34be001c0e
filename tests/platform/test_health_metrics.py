"""Readiness and the Prometheus endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tesai.app import create_app
from tesai.runtime import open_runtime
from tesai.settings import Settings
from tests.conftest import TEST_BROKER_URL
from tests.platform.conftest import MakeClient, add_test_routes


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def client_for(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    """A client of an app with its own runtime opened from adjusted settings."""
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> httpx.AsyncClient:
            s = settings.model_copy(update=overrides)
            rt = await open_runtime(s, run_periodic=False)
            stack.push_async_callback(rt.close)
            app = create_app(s, runtime=rt)
            add_test_routes(app)
            await stack.enter_async_context(app.router.lifespan_context(app))
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            )

        yield make


async def test_readyz_checks_the_broker_when_configured(client_for: Any, run_id: str) -> None:
    client = await client_for(broker_url=TEST_BROKER_URL, task_queue_prefix=f"tesai-test-{run_id}")
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "checks": {"database": "ok", "cache": "ok", "broker": "ok"},
    }


async def test_readyz_503_when_broker_unreachable(client_for: Any) -> None:
    client = await client_for(broker_url=f"amqp://guest:guest@127.0.0.1:{_closed_port()}//")
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["code"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error")
    assert "broker" in body["detail"]


async def test_readyz_503_when_cache_unreachable(client_for: Any) -> None:
    client = await client_for(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["cache"].startswith("error")
    assert (await client.get("/healthz")).status_code == 200


async def test_metrics_histogram_by_route_template(make_client: MakeClient) -> None:
    client = await make_client()
    for item in (1, 2, 3):
        assert (await client.get(f"/api/v1/test-items/{item}")).status_code == 200
    assert (await client.get("/api/v1/nope/42")).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}

    hist = families["tesai_http_request_duration_seconds"]
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in hist.samples
        if s.name.endswith("_count")
    }
    assert counts[("/api/v1/test-items/{item_id}", "GET", "2xx")] >= 3
    assert counts[("<unmatched>", "GET", "4xx")] >= 1
    assert not any("/api/v1/test-items/1" in route for route, _, _ in counts)

    assert "tesai_http_requests_in_flight" in families
    in_flight = families["tesai_http_requests_in_flight"].samples[0].value
    assert in_flight >= 1  # the scrape itself
    pool = families["tesai_db_pool_size"].samples[0].value
    assert pool >= 1
    assert "tesai_db_pool_checked_out" in families


_COUNT_AND_MAYBE_RENDER = """
import sys
from tesai.observability import metrics
with metrics.task_run("platform_test.mp"):
    pass
if sys.argv[1] == "render":
    body, _ = metrics.render()
    sys.stdout.write(body.decode())
"""


def test_multiprocess_mode_sums_every_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for role in ("count", "count", "render"):
        done = subprocess.run(
            [sys.executable, "-c", _COUNT_AND_MAYBE_RENDER, role],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    families = {f.name: f for f in text_string_to_metric_families(done.stdout)}
    started = families["tesai_tasks_started"].samples
    assert [(s.labels, s.value) for s in started if s.name.endswith("_total")] == [
        ({"task": "platform_test.mp"}, 3.0)
    ]
    assert "tesai_db_pool_size" in families

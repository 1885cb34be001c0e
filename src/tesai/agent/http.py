"""The agent's HTTP client to the control plane, and its connection reuse.

Heartbeats reuse one keep-alive connection. A connection must never be reused after the
server has closed it for idleness: the request would fail on a closed socket and be retried.
So the client lets an idle connection go a few seconds before the server does
(``keepalive_expiry_s`` < the server's ``timeout_keep_alive``, see
``tesai.devices.liveness.server_keep_alive_s``), and both are comfortably longer than the
heartbeat interval, so a beat at the interval always finds its connection open.
"""

from __future__ import annotations

import httpx

from tesai.agent import AGENT_VERSION

CONNECT_TIMEOUT_S = 5.0


def keepalive_expiry_s(interval_s: float) -> float:
    """How long the agent keeps an idle connection: two intervals and two seconds, three
    seconds less than the server keeps it (``max(5, 2·interval + 5)``)."""
    return 2 * interval_s + 2


def agent_client(
    server_url: str,
    *,
    interval_s: float,
    timeout_s: float,
    local_address: str | None = None,
) -> httpx.AsyncClient:
    """A client for ``server_url`` whose idle connections expire before the server's.

    ``local_address`` binds outgoing connections to one source address (a host with several;
    the storm benchmark gives each simulated agent its own loopback address).
    """
    limits = httpx.Limits(
        max_connections=10,
        max_keepalive_connections=2,
        keepalive_expiry=keepalive_expiry_s(interval_s),
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, local_address=local_address)
    return httpx.AsyncClient(
        base_url=server_url.rstrip("/"),
        timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
        headers={"User-Agent": f"tesai-agent/{AGENT_VERSION}"},
        transport=transport,
    )

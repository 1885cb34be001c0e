"""Network probe: round-trip time and download bandwidth to the control plane → a tier."""

from __future__ import annotations

import logging
import statistics
import time
from datetime import UTC, datetime

import httpx

from tesai.protocol.v1 import BANDWIDTH_PATH, HEALTHZ_PATH, NetworkProbe, connectivity_tier

log = logging.getLogger(__name__)

RTT_SAMPLES = 5
BANDWIDTH_BYTES = 8 * 1024 * 1024


async def measure_rtt(client: httpx.AsyncClient, samples: int = RTT_SAMPLES) -> float | None:
    """Median time of ``GET /healthz`` in milliseconds (None when the server cannot be reached)."""
    times: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        try:
            response = await client.get(HEALTHZ_PATH)
        except httpx.HTTPError:
            break  # unreachable: do not wait out a timeout per sample
        if response.status_code < 500:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times) if times else None


async def measure_bandwidth(
    client: httpx.AsyncClient, headers: dict[str, str], size: int = BANDWIDTH_BYTES
) -> float | None:
    """Download ``size`` bytes from the bandwidth endpoint: Mbit/s, or None when not offered."""
    start = time.perf_counter()
    received = 0
    try:
        async with client.stream(
            "GET", BANDWIDTH_PATH, params={"bytes": size}, headers=headers
        ) as response:
            if response.status_code != 200:
                return None  # 404: the server does not offer it; skip bandwidth
            async for chunk in response.aiter_bytes():
                received += len(chunk)
    except httpx.HTTPError:
        return None
    elapsed = time.perf_counter() - start
    if received == 0 or elapsed <= 0:
        return None
    return received * 8 / elapsed / 1e6


async def probe_network(
    client: httpx.AsyncClient, headers: dict[str, str], size: int = BANDWIDTH_BYTES
) -> NetworkProbe:
    """RTT, bandwidth and the connectivity tier they give."""
    rtt = await measure_rtt(client)
    bandwidth = await measure_bandwidth(client, headers, size) if rtt is not None and size else None
    return NetworkProbe(
        rtt_ms=round(rtt, 3) if rtt is not None else None,
        bandwidth_mbps=round(bandwidth, 1) if bandwidth is not None else None,
        tier=connectivity_tier(bandwidth),
        measured_at=datetime.now(UTC),
    )

"""Pool and money set-up for cluster tests: devices made listed in the database, credit."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from tesai.billing import service as billing
from tesai.devices.models import Device, DeviceStatus
from tesai.devices.service import create_device, record_transition
from tesai.runtime import Runtime

AddDevice = Callable[..., Awaitable[Device]]
Grant = Callable[[uuid.UUID, int], Awaitable[None]]


@pytest.fixture
async def add_device(
    runtime: Runtime, make_user: Callable[..., Awaitable[tuple[object, dict[str, str]]]]
) -> AddDevice:
    """A listed (online, verified) device of a fresh provider, as a joined agent leaves it."""
    provider, _ = await make_user(roles=("provider",))

    async def add(
        gpu_model: str | None = "NVIDIA A100",
        gpus: int = 1,
        price: int = 1_000_000,
        region: str = "eu-west",
        country: str = "DE",
        reliability: float = 0.99,
        provider_id: uuid.UUID | None = None,
    ) -> Device:
        async with runtime.sessionmaker.begin() as s:
            device, _, _ = await create_device(
                s,
                runtime.settings,
                provider_id=provider_id or provider.id,  # type: ignore[attr-defined]
                name="box",
                price_micro=price,
                region=region,
                country=country,
            )
            device.gpu_model = gpu_model if gpus else None
            device.gpu_count = gpus
            device.vram_bytes_per_gpu = 80 * 2**30 if gpus else 0
            device.cpu_cores = 16
            device.reliability = reliability
            device.verified_score = 500.0
            device.connectivity_tier = "t2"
            record_transition(s, device, DeviceStatus.verifying, "agent_joined")
            record_transition(s, device, DeviceStatus.online, "verification_passed")
        return device

    return add


@pytest.fixture
def grant(runtime: Runtime) -> Grant:
    async def give(user_id: uuid.UUID, amount: int) -> None:
        async with runtime.sessionmaker.begin() as s:
            await billing.admin_grant_credit(
                s,
                admin_user_id=None,
                user_id=user_id,
                amount_micro=amount,
                reason="test credit",
                idempotency_key=f"grant:{uuid.uuid4()}",
            )

    return give

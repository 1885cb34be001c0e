"""`tesai up` runs its own agent's Ray heads on this machine: its Ray proxy may connect to
loopback and local-network heads (the development allowance), unless the environment says
otherwise; a production-shaped server never does by default."""

from __future__ import annotations

import pytest

from tesai.embedded.up import UpOptions, serving_settings
from tesai.settings import Settings


def test_tesai_up_lets_its_proxy_reach_heads_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TESAI_RAY_PROXY_ALLOW_INTERNAL_HEADS", raising=False)
    assert Settings().ray_proxy_allow_internal_heads is False
    served = serving_settings(Settings(), UpOptions(host="127.0.0.1", port=8000))
    assert served.ray_proxy_allow_internal_heads is True

    monkeypatch.setenv("TESAI_RAY_PROXY_ALLOW_INTERNAL_HEADS", "false")
    served = serving_settings(Settings(), UpOptions(host="127.0.0.1", port=8000))
    assert served.ray_proxy_allow_internal_heads is False

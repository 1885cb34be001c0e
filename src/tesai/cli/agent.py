"""``tesai agent``: the provider agent's commands (defined in ``tesai.agent.cli``)."""

from __future__ import annotations

from tesai.agent.cli import app

__all__ = ["app"]

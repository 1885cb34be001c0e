"""``python -m tesai.agent --server URL --token T`` (what ``tesai up`` starts)."""

from __future__ import annotations

from tesai.agent.cli import app

if __name__ == "__main__":
    app(prog_name="tesai-agent")

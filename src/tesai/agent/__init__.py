"""The provider agent: runs on a provider's host, joins it to the pool and keeps it reported.

It imports only ``tesai.protocol``, its own modules and a few small libraries (httpx, psutil,
pydantic, numpy, nvidia-ml-py, prometheus-client, typer/rich), so it installs on hosts that have
none of the control plane's dependencies (an import-linter contract keeps it that way).
"""

from __future__ import annotations

from tesai import __version__ as AGENT_VERSION

__all__ = ["AGENT_VERSION"]

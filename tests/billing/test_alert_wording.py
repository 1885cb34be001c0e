"""The spend alerts as the README and the console's limits page state them are the ones the
guardrails store (``WARN_AT``, then the stop at ``CAP_REACHED``)."""

from __future__ import annotations

import re
from pathlib import Path

from tesai.billing.guardrails import CAP_REACHED, WARN_AT

ROOT = Path(__file__).parents[2]


def _percentages(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"(\d+)\s?%", text)]


def test_the_readme_states_the_thresholds_the_guardrails_use() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Spend guardrails", 1)[1].split("\n## ", 1)[0]
    assert _percentages(section)[: len(WARN_AT) + 1] == [*WARN_AT, CAP_REACHED]


def test_the_console_limits_page_states_the_thresholds_the_guardrails_use() -> None:
    page = (ROOT / "web/src/pages/customer/Settings.tsx").read_text()
    [line] = [x for x in page.splitlines() if "You are told here when spend reaches" in x]
    assert _percentages(line) == [*WARN_AT, CAP_REACHED]

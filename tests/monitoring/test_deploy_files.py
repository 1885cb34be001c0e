"""deploy/prometheus and deploy/grafana: valid for their tools, and about metrics that exist.

A dashboard panel or an alert over a metric name nobody exports shows "No data" forever and
never fires; these tests catch a renamed metric the day it is renamed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

import tesai.app  # noqa: F401 - imports every module that defines control plane metrics
from tesai.agent.metrics import AgentMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset"}
PROMQL_WORDS |= {"and", "or", "unless", "bool", "inf", "nan", "le"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; `make test` installs it)",
)


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a scrape of ``registry`` can return (with _total, _bucket, …)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def known_metrics() -> set[str]:
    return sample_names(REGISTRY) | sample_names(AgentMetrics().registry) | PROMETHEUS_SERIES


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small lexer, enough for our files)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\$\{?\w+\}?", "1m", expr)  # Grafana variables
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue  # a function or a keyword
        if re.fullmatch(r"\d+[smhdwy]", word) or (m.start() > 0 and expr[m.start() - 1].isdigit()):
            continue  # a duration or a number's exponent/unit
        names.add(word)
    return names


def test_the_lexer_finds_names_and_only_names() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (route, le) (rate(a_bucket{route=~"x|y"}[5m]))) '
        '/ on() group_left sum(b_total offset 1h) > 3 * max(c{instance=~"$instance"}) and d'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}
    assert metric_names("rate(missing_total[$__rate_interval])") == {"missing_total"}


def test_every_dashboard_panel_reads_metrics_we_export() -> None:
    known = known_metrics()
    assert {"tesai_devices", "tesai_heartbeats_total", "DCGM_FI_DEV_GPU_UTIL"} <= known
    assert {path.stem for path in DASHBOARDS} == {"platform", "fleet", "cluster"}
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/tesai.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for path in DASHBOARDS:
        board: dict[str, Any] = json.loads(path.read_text())
        assert board["uid"].startswith("tesai-")
        panels = board["panels"]
        assert panels, path.name
        assert len({p["id"] for p in panels}) == len(panels), f"{path.name}: duplicate panel ids"
        for panel in panels:
            where = f"{path.name}: panel {panel['title']!r}"
            assert panel["datasource"]["uid"] == uid, where
            assert panel["targets"], where
            for target in panel["targets"]:
                names = metric_names(target["expr"])
                assert names, f"{where}: no metric in {target['expr']!r}"
                unknown = names - known
                assert not unknown, f"{where}: unknown metrics {sorted(unknown)}"
        for var in board["templating"]["list"]:
            # label_values(<series selector>, <label>)
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert selector, f"{path.name}: variable {var['name']}"
            unknown = metric_names(selector.group(1)) - known
            assert not unknown, f"{path.name}: variable {var['name']}: {sorted(unknown)}"


def test_every_alert_reads_metrics_we_export_and_says_what_to_do() -> None:
    known = known_metrics()
    rules = yaml.safe_load((PROMETHEUS / "rules" / "tesai.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {
        "TesaiDevicesGoingOfflineFast",
        "TesaiClusterFailures",
        "TesaiSettlementLagging",
        "TesaiPayoutFailures",
        "TesaiTaskQueueBacklog",
        "TesaiTaskFailures",
    } <= {a["alert"] for a in alerts}
    docs = (ROOT / "docs" / "operators.md").read_text()
    for alert in alerts:
        unknown = metric_names(alert["expr"]) - known
        assert not unknown, f"{alert['alert']}: unknown metrics {sorted(unknown)}"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"]
        assert alert["alert"] in docs, f"{alert['alert']} is not explained in docs/operators.md"


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("check", "rules", "rules/tesai.yml")
    # Each alert fires on the history that should page someone, and not before.
    assert "SUCCESS" in _promtool("test", "rules", "rules/tesai_test.yml")


@needs_promtool
def test_promtool_accepts_the_scrape_config() -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")

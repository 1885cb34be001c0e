"""Reading a failed ``ray start``: its reason, whether to try again, and Ray's own lines.

Fed with output and log files recorded from real failed starts (``ray_recordings``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tesai.agent import ray_failures as rf
from tesai.agent.ray_node import RayNodeError, check_temp_dir
from tests.agent import ray_recordings as rec

TOKEN = "tok-3b1f9c0e4d2a7b6c5e8f0a1b2c3d4e5f"


def test_head_whose_gcs_port_another_cluster_holds_is_a_port_clash_not_an_auth_failure() -> None:
    """The head's CLI met the other cluster's GCS on its port (``InvalidAuthToken``): the
    device is fine, the port was taken; it is worth another try on fresh ports."""
    output = rec.HEAD_PORT_CLASH_STDOUT + rec.HEAD_PORT_CLASH_STDERR
    logs = {"gcs_server.err": rec.HEAD_PORT_CLASH_GCS_SERVER_ERR}
    assert rf.classify("head", output, logs) == rf.StartFailure(rf.REASON_RAY_PORT_IN_USE, True)
    # Even with Ray's log files gone, the CLI's own words say so.
    assert rf.classify("head", output, {}).reason == rf.REASON_RAY_PORT_IN_USE


def test_worker_rejected_by_its_head_is_an_auth_failure_and_not_retried() -> None:
    output = rec.WORKER_WRONG_TOKEN_STDOUT + rec.WORKER_WRONG_TOKEN_STDERR
    assert rf.classify("worker", output, {}) == rf.StartFailure(rf.REASON_RAY_AUTH_FAILED, False)


def test_a_dashboard_module_that_died_is_retried_unless_its_log_shows_a_too_deep_temp_dir() -> None:
    output = rec.HEAD_METRICS_HEAD_EOF_STDOUT + rec.HEAD_METRICS_HEAD_EOF_STDERR
    died = rf.classify("head", output, {})
    assert died == rf.StartFailure(rf.REASON_RAY_DASHBOARD_FAILED, True)
    logs = {"dashboard_MetricsHead.log": rec.HEAD_METRICS_HEAD_EOF_MODULE_LOG}
    too_deep = rf.classify("head", output, logs)
    assert too_deep == rf.StartFailure(rf.REASON_RAY_TEMP_DIR_TOO_LONG, False)


def test_an_overloaded_host_missing_rays_startup_wait_is_a_timeout_worth_retrying() -> None:
    failure = rf.classify("head", rec.HEAD_OVERLOADED_STDERR, {})
    assert failure == rf.StartFailure(rf.REASON_RAY_START_TIMEOUT, True)


def test_the_reason_message_names_the_cause_from_the_module_log_not_only_the_symptom() -> None:
    output = rec.HEAD_METRICS_HEAD_EOF_STDOUT + rec.HEAD_METRICS_HEAD_EOF_STDERR
    logs = {
        "dashboard.log": "2026-12-07 18:22:30,001\tINFO head.py:1 -- starting\n",
        "dashboard_MetricsHead.log": rec.HEAD_METRICS_HEAD_EOF_MODULE_LOG,
    }
    message = rf.failure_message(output, logs, TOKEN)
    lines = message.splitlines()
    assert lines[0] == (
        "ray start: RuntimeError: Module MetricsHead failed to start. Received EOF from pipe."
    )
    assert any(
        ln.startswith(
            "dashboard_MetricsHead.log: OSError: validate_socket_filename failed: "
            "AF_UNIX path length cannot exceed 107 bytes"
        )
        for ln in lines
    )
    assert "dashboard.log:" not in message  # a log with no error line adds nothing
    assert "Traceback" not in message
    assert '  File "' not in message
    assert len(message) <= rf.MESSAGE_LIMIT


def test_the_reason_message_is_bounded_ends_with_rays_last_words_and_hides_the_token() -> None:
    """Ray retries once a second for ~25 s: the message collapses the repeats, keeps the end
    of the output (where the final error is) and never carries the cluster token."""
    output = rec.WORKER_WRONG_TOKEN_STDOUT + rec.WORKER_WRONG_TOKEN_STDERR.replace(
        "Authentication token is missing", f"token {TOKEN} is\x00 missing"
    )
    logs = {"raylet.out": f"[2026-12-07 18:33:00,001 E 1 1] token={TOKEN} rejected\n" * 50}
    message = rf.failure_message(output, logs, TOKEN)
    assert len(message) <= rf.MESSAGE_LIMIT
    assert TOKEN not in message
    assert "[token]" in message
    assert "\x00" not in message  # the wire's JSON refuses NUL
    assert message.splitlines()[0].startswith(
        "ray start: ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken"
    )
    assert "(×" in message  # the once-a-second retries as one line and a count
    assert message.count("gcs_client.cc:210") == 1
    assert message.count("raylet.out:") == 1  # the same line from one file once


def test_session_logs_are_read_from_the_latest_session(tmp_path: Path) -> None:
    old = tmp_path / "session_2026-12-07_18-00-00_000001_1" / "logs"
    new = tmp_path / "session_2026-12-07_18-21-30_567726_4449" / "logs"
    for d in (old, new):
        d.mkdir(parents=True)
    (old / "gcs_server.err").write_text("old\n")
    (new / "dashboard_MetricsHead.log").write_text("x" * 20_000 + "\nOSError: too long\n")
    (new / "empty.out").write_text("")
    (new / "events").mkdir()
    os.symlink(new.parent, tmp_path / "session_latest")
    logs = rf.read_session_logs(tmp_path)
    assert list(logs) == ["dashboard_MetricsHead.log"]
    assert logs["dashboard_MetricsHead.log"].endswith("OSError: too long\n")
    assert len(logs["dashboard_MetricsHead.log"]) <= 16 * 1024
    assert rf.read_session_logs(tmp_path / "missing") == {}


def test_socket_path_arithmetic_matches_the_path_ray_refused() -> None:
    """The recorded refusal: 108 bytes with a 4-digit PID in a 43-character temp dir."""
    refused = (
        "/tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0/session_2026-12-07_18-21-30_567726_4449"
        "/sockets/dash_MetricsHead"
    )
    temp_dir = Path("/tmp/tbka6cny6z/a00-olgua075/ab4700abaa70-0")
    assert rf.longest_socket_path(temp_dir, "head", pid_digits=4) == len(refused) == 108


def test_a_temp_root_too_deep_for_rays_sockets_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark's agents had roots like ``/tmp/tbXXXXXXXX/a0-XXXXXXXX`` (27 characters):
    their heads started only while PIDs had 4 digits. Refused up front, with the bound."""
    monkeypatch.setattr("tesai.agent.ray_node._pid_digits", lambda: 5)
    deep = Path("/tmp/tb1yhz91fe/a0-apldbjxe/932d19c009b6-0")
    with pytest.raises(RayNodeError) as err:
        check_temp_dir(deep, "head")
    assert err.value.reason == rf.REASON_RAY_TEMP_DIR_TOO_LONG
    assert "TESAI_RAY_TEMP_ROOT" in err.value.message
    assert "must be 1 byte shorter" in err.value.message
    check_temp_dir(Path("/tmp/tb1yhz91fe/a0/932d19c009b6-0"), "head")
    check_temp_dir(deep, "worker")  # a worker has no dashboard sockets

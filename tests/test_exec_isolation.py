"""The isolated runner: results come back, and crashes, exceptions, timeouts and memory hogs become
``failed`` outcomes while the calling process carries on. The jobs import no torch (fast)."""

from __future__ import annotations

import json
import os

import pytest

from executors.isolation import RESULT_FILE, run_isolated

MIB = 2**20


def test_result_and_peak_memory_come_back(tmp_path):
    outcome = run_isolated("tests.exec_helpers:echo", {"value": 7}, tmp_path / "job")
    assert outcome.status == "ok" and outcome.reason is None
    assert outcome.payload["echo"] == 7 and outcome.payload["pid"] != os.getpid()
    assert outcome.last_phase == "echo"
    assert 5 * MIB < outcome.max_rss_bytes < 200 * MIB  # the child's own VmHWM, not the forking parent's
    assert json.loads((tmp_path / "job" / RESULT_FILE).read_text())["status"] == "ok"


@pytest.mark.parametrize("job, expected", [
    ("abort", "crashed: the process was killed by SIGABRT during phase 'about-to-crash'"),
    ("exit_without_result", "crashed: the process exited with code 3 without a result"),
    ("raise_error", "RuntimeError: deliberate failure"),
])
def test_failures_are_reported_not_raised(tmp_path, job, expected):
    outcome = run_isolated(f"tests.exec_helpers:{job}", {}, tmp_path / job)
    assert outcome.status == "failed"
    assert outcome.reason == expected
    assert outcome.payload is None


def test_timeout_kills_the_child(tmp_path):
    outcome = run_isolated("tests.exec_helpers:sleep", {"seconds": 30}, tmp_path / "job", timeout_s=1.5)
    assert outcome.status == "failed" and outcome.killed_by == "timeout"
    assert outcome.reason == "timeout: killed after 1.5 s during phase 'sleeping'"
    assert outcome.signal == "SIGKILL"
    assert outcome.wall_seconds < 10


def test_memory_cap_kills_a_hog_and_spares_a_small_job(tmp_path):
    cap = 250 * MIB
    hog = run_isolated("tests.exec_helpers:hog_memory", {"mib": 4096}, tmp_path / "hog", memory_cap_bytes=cap)
    assert hog.status == "failed" and hog.killed_by == "memory-cap"
    assert hog.reason.startswith("memory cap exceeded: resident memory passed 250 MiB during phase 'allocating'")
    assert cap < hog.max_rss_bytes < 1024 * MIB  # polled: killed far below the 4 GiB it wanted
    small = run_isolated("tests.exec_helpers:hog_memory", {"mib": 64}, tmp_path / "small", memory_cap_bytes=cap)
    assert small.status == "ok" and small.payload == {"allocated_mib": 64}


def test_bad_limits_are_user_errors(tmp_path):
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="timeout_s must be positive"):
        run_isolated("tests.exec_helpers:echo", {"value": 1}, tmp_path, timeout_s=0)
    with pytest.raises(InvalidRequestError, match="memory cap must be positive"):
        run_isolated("tests.exec_helpers:echo", {"value": 1}, tmp_path, memory_cap_bytes=-1)

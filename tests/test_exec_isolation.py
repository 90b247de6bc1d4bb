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
    assert outcome.reason == "timed out after 1.5 s during phase 'sleeping' (killed)"
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


@pytest.mark.parametrize("limits, message", [
    ({"timeout_s": 0}, "timeout_s must be a positive finite number of seconds, got 0"),
    ({"timeout_s": float("nan")}, "timeout_s must be a positive finite number of seconds, got nan"),
    ({"timeout_s": float("inf")}, "got inf; pass None for no timeout"),
    ({"memory_cap_bytes": -1}, "memory cap must be a positive finite number of bytes, got -1"),
    ({"memory_cap_bytes": 0}, "memory cap must be a positive finite number of bytes, got 0"),
    ({"memory_cap_bytes": float("nan")}, "memory cap must be a positive finite number of bytes, got nan"),
])
def test_bad_limits_are_user_errors(tmp_path, limits, message):
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=message):
        run_isolated("tests.exec_helpers:echo", {"value": 1}, tmp_path, **limits)
    assert not (tmp_path / "request.json").exists()  # refused before any work


def test_worker_killed_by_the_kernel_is_a_failed_outcome(tmp_path):
    """SIGKILL from outside (what the OOM killer sends) while the job runs: failed, with the phase."""
    outcome = run_isolated("tests.exec_helpers:kill_self", {}, tmp_path / "job")
    assert outcome.status == "failed" and outcome.signal == "SIGKILL"
    assert outcome.reason == ("crashed: the process was killed by SIGKILL (likely the kernel's out-of-memory "
                              "killer) during phase 'about-to-be-killed'")


def test_phase_callback_sees_the_child_phases(tmp_path):
    seen = []
    outcome = run_isolated("tests.exec_helpers:sleep", {"seconds": 1.0}, tmp_path / "job",
                           on_phase=lambda phase, seconds: seen.append(phase))
    assert outcome.status == "ok" and seen == ["sleeping"]
    worker = json.loads((tmp_path / "job" / "worker.json").read_text())
    assert worker["parent_pid"] == os.getpid() and worker["pid"] != os.getpid()

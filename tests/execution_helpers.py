"""A stand-in executor for the queue tests (``execute_jobs(..., executor="tests.execution_helpers:log_and_sleep")``).

It is called exactly like ``executors.execute`` and returns an ``ExecutionResult``, but runs no model: it
appends ``start <summary> <pid>`` to ``<out_dir>/calls.log``, sleeps ``FITPLAN_TEST_JOB_S`` seconds
(default 0.2), appends ``end <summary> <pid>``, and reports a quality that depends on the strategy
(100 - 2 x the weight bits' distance from 16). A strategy with 2:4 pruning fails (a failed result) and one
with 4:8 pruning raises, as strategies that fail for real. The log lets a test count how often each job
started and finished, in every worker process.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path


def _log(out_dir: str, line: str) -> None:
    with open(Path(out_dir) / "calls.log", "a", encoding="utf-8") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(line + "\n")
        log.flush()


def calls(out_dir: str | Path) -> list[tuple[str, str, int]]:
    """(event, summary, pid) per logged line."""
    path = Path(out_dir) / "calls.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event, rest = line.split(" ", 1)
        summary, pid = rest.rsplit(" ", 1)
        rows.append((event, summary, int(pid)))
    return rows


def log_and_sleep(model_dir, strategy, *, evaluator=None, out_dir=None, isolate=True, data=None, device="auto",
                  timeout_s=None):
    from executors.result import ExecutionResult, LatencyMeasurement, QualityMeasurement

    summary = strategy.summary()
    _log(out_dir, f"start {summary} {os.getpid()}")
    time.sleep(float(os.environ.get("FITPLAN_TEST_JOB_S", "0.2")))
    strategy_dict = json.loads(strategy.to_json())
    common = dict(model_dir=str(model_dir), strategy=strategy_dict, strategy_summary=summary, device="cpu",
                  isolated=isolate)
    if strategy.sparsity is not None and strategy.sparsity.pattern == "4:8":
        _log(out_dir, f"end {summary} {os.getpid()}")
        from planner.errors import UnsupportedError

        raise UnsupportedError("deliberate: this model cannot take 4:8 sparsity")
    if strategy.sparsity is not None and strategy.sparsity.pattern == "2:4":
        _log(out_dir, f"end {summary} {os.getpid()}")
        return ExecutionResult(status="failed", reason="RuntimeError: deliberate failure of 2:4", **common)
    bits = {"nf4": 4, "int8": 8, "bf16": 16}.get(strategy.quantization.weights if strategy.quantization else "", 16)
    retained = 100.0 - 2.0 * (16 - bits) / 4
    result_path = Path(out_dir) / f"{summary.replace(' ', '_')}-{os.getpid()}.json"
    result = ExecutionResult(status="ok", peak_rss_bytes=(100 + bits) * 2**20, result_path=str(result_path),
                             quality=QualityMeasurement(evaluator="fidelity", metric="cosine", higher_is_better=True,
                                                        compressed=retained / 100, baseline=1.0,
                                                        retained_pct=retained, baseline_cached=True),
                             latency=LatencyMeasurement(batch_size=1, seq_len=8, warmup=1, repeats=3,
                                                        median_ms=10.0 + bits, min_ms=10.0, max_ms=40.0,
                                                        tokens_per_s=100.0), **common)
    result.save(result_path)
    _log(out_dir, f"end {summary} {os.getpid()}")
    return result


def isolated_sleep(model_dir, strategy, *, evaluator=None, out_dir=None, isolate=True, data=None, device="auto",
                   timeout_s=None):
    """Like ``executors.execute``'s isolated path, without a model: the run (a sleep of FITPLAN_TEST_JOB_S
    seconds) happens in ``executors.isolation.run_isolated``'s child process under ``timeout_s``; a run it
    kills comes back as a failed result with the isolation's reason."""
    from executors.isolation import run_isolated
    from executors.result import ExecutionResult

    summary = strategy.summary()
    _log(out_dir, f"start {summary} {os.getpid()}")
    outcome = run_isolated("tests.exec_helpers:sleep", {"seconds": float(os.environ.get("FITPLAN_TEST_JOB_S", "0.2"))},
                           Path(out_dir) / f"job-{summary.replace(' ', '_')}-{time.monotonic_ns()}", timeout_s=timeout_s)
    _log(out_dir, f"end {summary} {os.getpid()}")
    return ExecutionResult(status=outcome.status, reason=outcome.reason, model_dir=str(model_dir),
                           strategy=json.loads(strategy.to_json()), strategy_summary=summary, device="cpu",
                           isolated=True, wall_seconds=outcome.wall_seconds)

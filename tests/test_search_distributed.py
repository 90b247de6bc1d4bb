"""Several ``fitplan search`` processes on one study (PostgreSQL and SQLite), and a search killed with
SIGKILL: trials add up, none is duplicated or lost, and the search resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from search.objective import trial_record
from tests.services import postgres_or_skip

ROOT = Path(__file__).resolve().parents[1]
LLAMA = "meta-llama/Llama-3.1-8B"
WORKERS = 3


@pytest.fixture(scope="module")
def postgres_url():
    yield from postgres_or_skip()


def _search(storage: str, study: str, trials: int, seed: int, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "planner.cli", "search", LLAMA, "--max-memory-gb", "16", "--max-accuracy-loss",
               "5", "--gpu", "RTX 4090", "--trials", str(trials), "--sampler", "random", "--seed", str(seed),
               "--storage", storage, "--study", study, "--out", str(out), "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_workers(storage: str, tmp_path: Path, trials: int) -> optuna.Study:
    workers = [_search(storage, "shared", trials, seed, tmp_path / f"w{seed}") for seed in range(WORKERS)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-2000:]
    return optuna.load_study(study_name="shared", storage=storage)


def _check_trials(study: optuna.Study, trials: int) -> None:
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL))
    everything = study.get_trials()
    assert len(everything) == len(finished)  # nothing left running, nothing lost
    numbers = [t.number for t in everything]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicates, no gaps
    # the budget is the study's total: each worker checks it before a trial, so at most one extra per worker
    assert trials <= len(finished) <= trials + WORKERS - 1
    by_worker = Counter(trial_record(t)["worker"] for t in everything)
    assert len(by_worker) == WORKERS and all(count > 0 for count in by_worker.values())
    assert sum(by_worker.values()) == len(everything)


def test_three_processes_share_one_postgresql_study(postgres_url, tmp_path):
    _check_trials(_run_workers(postgres_url, tmp_path, trials=60), trials=60)


def test_three_processes_share_one_sqlite_study(tmp_path):
    _check_trials(_run_workers(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path, trials=45), trials=45)


def test_a_search_killed_with_sigkill_loses_no_finished_trial_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'fitplan.db'}"
    worker = _search(storage, "killed", 100_000, 0, tmp_path / "out")
    deadline = time.monotonic() + 300
    complete: list[int] = []
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
            complete = [t.number for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
        except (KeyError, Exception):  # noqa: BLE001 - the study may not exist yet
            continue
        if len(complete) >= 15:
            break
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate()
    assert len(complete) >= 15
    after = optuna.load_study(study_name="killed", storage=storage)
    kept = {t.number for t in after.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    assert set(complete) <= kept
    resumed = _search(storage, "killed", len(kept) + 5, 1, tmp_path / "out2")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    final = optuna.load_study(study_name="killed", storage=storage)
    assert len(final.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= len(kept) + 5 - 1

"""The execution queue (search.execution, ``fitplan worker``): idempotent enqueue, each job taken by exactly
one worker (SQLite and PostgreSQL), a SIGKILLed worker's job re-queued and finished by another worker,
failures kept as measured, one real execution, and the message without torch.

Most tests run the stand-in executor ``tests.execution_helpers:log_and_sleep`` (called like
``executors.execute``; it logs each start and end), so the queue's guarantees are checked in seconds;
``test_a_real_execution_on_minilm`` runs ``executors.execute`` for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from planner.errors import InvalidRequestError
from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec
from search.execution import (JOB_KEY, MEASUREMENT_KEY, ExecutionJob, ExecutionRequest, _Queue, execute_jobs,
                              execution_study_name, run_worker)
from search.storage import storage_url
from tests.execution_helpers import calls
from tests.services import postgres_or_skip

ROOT = Path(__file__).resolve().parents[1]
FAKE = "tests.execution_helpers:log_and_sleep"
# a grace of 6 heartbeats: a live worker is never taken for dead on a loaded machine; the SIGKILL test,
# which waits for the grace to pass, shortens it
FAST = {"executor": FAKE, "heartbeat_s": 1, "grace_s": 6, "poll_s": 0.2}


def _strategies() -> list[CompressionStrategy]:
    quantized = [CompressionStrategy(quantization=QuantizationSpec(weights=w)) for w in ("nf4", "int8", "bf16")]
    pruned = [CompressionStrategy(sparsity=SparsitySpec(level=level)) for level in (0.1, 0.2, 0.3, 0.4, 0.6)]
    failing = [CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern=p)) for p in ("4:8", "2:4")]
    return quantized + pruned + failing


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def postgres_url():
    yield from postgres_or_skip()


def _pop_all_concurrently(storage: str, name: str, model_dir: Path, out: Path, jobs: int, threads: int) -> list[int]:
    """Enqueue ``jobs`` jobs, then ``threads`` threads (each with its own storage connection) pop until empty."""
    # taken jobs are not run here (no heartbeat after the first): a long grace keeps them from being re-queued
    request = ExecutionRequest(model_dir=str(model_dir), out_dir=str(out), executor=FAKE, heartbeat_s=1, grace_s=600)
    queue = _Queue.open(storage, name, request)
    strategy = CompressionStrategy(quantization=QuantizationSpec(weights="nf4"))
    queue.enqueue([ExecutionJob(key=f"job-{i}", strategy_json=strategy.to_json()) for i in range(jobs)])
    taken: list[int] = []
    barrier = threading.Barrier(threads)

    def pop_until_empty() -> None:
        mine = _Queue.open(storage, name, request, create=False)
        barrier.wait()
        while (trial := mine.pop()) is not None:
            taken.append(trial.number)

    workers = [threading.Thread(target=pop_until_empty) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return taken


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_each_enqueued_job_is_taken_by_exactly_one_worker(backend, request, tmp_path, model_dir):
    # Optuna's own pop (Study.ask) took 19-22 of 300 SQLite trials twice with 4 workers (measured); with the
    # execution storage's exclusive transactions none is taken twice, and none is left behind.
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else str(tmp_path / "q.db")
    taken = _pop_all_concurrently(storage, f"pop-{tmp_path.name}", model_dir, tmp_path, jobs=80, threads=4)
    assert sorted(taken) == list(range(80))


def _check_once(out: Path, n: int) -> Counter:
    """Every strategy started and ended exactly once; returns the workers' pids."""
    log = calls(out)
    assert Counter((event, summary) for event, summary, _ in log) == Counter(
        {(event, s.summary()): 1 for s in _strategies()[:n] for event in ("start", "end")})
    return Counter(pid for _, _, pid in log)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_local_workers_run_every_job_once_and_a_second_call_runs_none(backend, request, tmp_path, model_dir):
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else str(tmp_path / "q.db")
    name = f"study-{backend}-{tmp_path.name}"
    jobs = [ExecutionJob.of(s, round=1, trial=i) for i, s in enumerate(_strategies())]
    first = execute_jobs(storage, name, jobs, model_dir=model_dir, out_dir=tmp_path, workers=2, **FAST)
    assert [m.key for m in first] == [j.key for j in jobs] and [m.trial for m in first] == list(range(len(jobs)))
    assert {m.worker.rsplit("/", 1)[1] for m in first} == {"1", "2"}  # both threads took jobs
    _check_once(tmp_path, len(jobs))
    nf4 = first[0]
    assert (nf4.status, nf4.quality_retained_pct, nf4.latency_ms, nf4.round) == ("ok", 94.0, 14.0, 1)
    assert nf4.memory_gib == pytest.approx(104 / 1024) and Path(nf4.result_path).is_file()
    # strategies that fail for real (a failed result, or an exception): measured-failed with the reason,
    # not retried
    raised, failed = first[-2:]
    assert failed.status == "failed" and failed.reason == "RuntimeError: deliberate failure of 2:4"
    assert raised.status == "failed" and raised.reason.startswith("UnsupportedError: deliberate: this model cannot")

    # the same jobs again, plus the first one twice: nothing runs, the same measurements come back
    again = execute_jobs(storage, name, jobs + jobs[:1], model_dir=model_dir, out_dir=tmp_path, workers=2, **FAST)
    assert again == first + first[:1]
    _check_once(tmp_path, len(jobs))
    study = optuna.load_study(study_name=execution_study_name(name), storage=storage_url(storage))
    assert len(study.trials) == len(jobs)
    assert all(t.state == optuna.trial.TrialState.COMPLETE and MEASUREMENT_KEY in t.user_attrs for t in study.trials)


def test_a_job_queued_twice_runs_once_and_the_copy_is_closed_as_a_duplicate(tmp_path, model_dir):
    # two searches enqueueing the same key at the same moment can both add it: the later copy is not run
    storage, name = str(tmp_path / "q.db"), "dup"
    request = ExecutionRequest(model_dir=str(model_dir), out_dir=str(tmp_path), executor=FAKE, heartbeat_s=1, grace_s=6)
    queue = _Queue.open(storage, name, request)
    job = ExecutionJob.of(_strategies()[0])
    for _ in range(2):
        queue.study.enqueue_trial({}, user_attrs={JOB_KEY: job.model_dump()})
    [measurement] = execute_jobs(storage, name, [job], model_dir=model_dir, out_dir=tmp_path, workers=2, **FAST)
    assert measurement.status == "ok"
    assert [e for e, _, _ in calls(tmp_path)] == ["start", "end"]
    states = sorted(t.state.name for t in queue.study.get_trials())
    assert states == ["COMPLETE", "PRUNED"]
    assert queue.study.get_trials()[1].user_attrs["fitplan_duplicate_of"] == 0


def test_a_worker_taken_for_dead_while_it_ran_hands_its_measurement_to_the_requeued_copy(tmp_path, model_dir,
                                                                                        monkeypatch):
    # its heartbeat was late (a frozen machine): the job was failed and re-queued while it still ran; when it
    # finishes it completes the waiting copy instead, so the job is not run a second time
    monkeypatch.setenv("FITPLAN_TEST_JOB_S", "1")
    request = ExecutionRequest(model_dir=str(model_dir), out_dir=str(tmp_path), executor=FAKE, heartbeat_s=1,
                               grace_s=600)
    queue = _Queue.open(str(tmp_path / "q.db"), "frozen", request)
    queue.enqueue([ExecutionJob.of(_strategies()[0])])
    taken = queue.pop()
    runner = threading.Thread(target=queue.run, args=(taken, "w"))
    runner.start()
    while not calls(tmp_path):
        time.sleep(0.05)
    assert queue.storage.set_trial_state_values(taken._trial_id, state=optuna.trial.TrialState.FAIL)
    queue.retry(queue.study, queue.storage.get_trial(taken._trial_id))  # what fail_stale_trials does
    runner.join()
    first, copy = queue.study.get_trials()
    assert first.state.name == "FAIL" and copy.state.name == "COMPLETE"
    assert copy.user_attrs[MEASUREMENT_KEY]["quality_retained_pct"] == 94.0
    assert [e for e, _, _ in calls(tmp_path)] == ["start", "end"]


def _worker(storage: str, name: str, job_seconds: float, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FITPLAN_TEST_JOB_S": str(job_seconds)}
    return subprocess.Popen([sys.executable, "-m", "planner.cli", "worker", "--storage", storage, "--study", name,
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_sigkilled_worker_s_job_is_requeued_and_finished_once_by_another_worker(tmp_path, model_dir):
    storage, name = str(tmp_path / "q.db"), "killed"
    job = ExecutionJob.of(_strategies()[1], round=2)
    returned: list = []
    caller = threading.Thread(target=lambda: returned.extend(execute_jobs(
        storage, name, [job], model_dir=model_dir, out_dir=tmp_path, workers=0, **{**FAST, "grace_s": 3})))
    caller.start()  # queues the job and waits for remote workers (workers=0)
    doomed = _worker(storage, name, 600)
    deadline = time.monotonic() + 120
    while not calls(tmp_path) and time.monotonic() < deadline:
        assert doomed.poll() is None, doomed.communicate()[1]
        time.sleep(0.2)
    assert [e for e, _, _ in calls(tmp_path)] == ["start"], "the first worker never started the job"
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    rescuer = _worker(storage, name, 0.2, "--max-jobs", "1", "--json")
    out, err = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, err
    caller.join(timeout=60)
    assert not caller.is_alive()
    [measurement] = returned
    log = calls(tmp_path)
    assert [e for e, _, _ in log] == ["start", "start", "end"]  # started twice, finished once
    assert log[0][2] == doomed.pid and log[2][2] == rescuer.pid
    assert measurement.status == "ok" and measurement.worker.endswith(f":{rescuer.pid}")
    assert '"status": "ok"' in out
    study = optuna.load_study(study_name=execution_study_name(name), storage=f"sqlite:///{storage}")
    killed, retried = study.get_trials()
    assert killed.state == optuna.trial.TrialState.FAIL and retried.state == optuna.trial.TrialState.COMPLETE
    assert retried.system_attrs["retry_history"] == [killed.number]


def test_a_stopped_worker_requeues_its_job_at_once(tmp_path, model_dir):
    # SIGTERM (a cluster stopping the worker): no wait for the grace period, the job goes back to the queue
    storage, name = str(tmp_path / "q.db"), "stopped"
    job = ExecutionJob.of(_strategies()[2])
    request = ExecutionRequest(model_dir=str(model_dir), out_dir=str(tmp_path), executor=FAKE, heartbeat_s=1,
                               grace_s=600)
    queue = _Queue.open(storage, name, request)
    queue.enqueue([job])
    worker = _worker(storage, name, 600)
    deadline = time.monotonic() + 120
    while not calls(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 130, err
    states = [t.state.name for t in queue.study.get_trials()]
    assert states == ["FAIL", "WAITING"]
    assert run_worker(storage, name, max_jobs=1, poll_s=0.2) == 1
    assert [e for e, _, _ in calls(tmp_path)] == ["start", "start", "end"]


def test_bad_requests_are_refused_before_anything_is_queued(tmp_path, model_dir):
    jobs = [ExecutionJob.of(_strategies()[0])]
    storage = str(tmp_path / "q.db")
    with pytest.raises(InvalidRequestError, match="workers must be a whole number from 0 to 64"):
        execute_jobs(storage, "s", jobs, model_dir=model_dir, out_dir=tmp_path, workers=-1, executor=FAKE)
    with pytest.raises(InvalidRequestError, match="grace_s .* at least twice heartbeat_s"):
        execute_jobs(storage, "s", jobs, model_dir=model_dir, out_dir=tmp_path, executor=FAKE, heartbeat_s=5,
                     grace_s=6)
    with pytest.raises(InvalidRequestError, match="strategy_json is not a strategy"):
        execute_jobs(storage, "s", [ExecutionJob(key="k", strategy_json="{"), *jobs], model_dir=model_dir,
                     out_dir=tmp_path, executor=FAKE)
    with pytest.raises(InvalidRequestError, match="cannot be imported"):
        execute_jobs(storage, "s", jobs, model_dir=model_dir, out_dir=tmp_path, executor="tests.nothing:here")
    assert not (tmp_path / "q.db").exists()
    execute_jobs(storage, "s", jobs, model_dir=model_dir, out_dir=tmp_path, **FAST)
    with pytest.raises(InvalidRequestError, match="evaluator='fidelity'.*Measurements of both would be mixed"):
        execute_jobs(storage, "s", jobs, model_dir=model_dir, out_dir=tmp_path, evaluator="fidelity", **FAST)


def test_without_torch_one_clear_error_names_the_exec_extra(tmp_path, monkeypatch, capsys):
    from planner.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)  # importlib.util.find_spec then reports it missing
    job = ExecutionJob.of(_strategies()[0])
    with pytest.raises(InvalidRequestError, match=r'needs torch, which is not installed; .*pip install "\.\[exec\]"'):
        execute_jobs(str(tmp_path / "q.db"), "s", [job], model_dir=tmp_path, out_dir=tmp_path)
    # a remote worker on a machine without torch: exit 2, one line
    monkeypatch.undo()
    _Queue.open(str(tmp_path / "q.db"), "s", ExecutionRequest(model_dir=str(tmp_path), out_dir=str(tmp_path)))
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["worker", "--storage", str(tmp_path / "q.db"), "--study", "s", "--max-jobs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'pip install ".[exec]"' in err


@pytest.mark.exec
def test_a_real_execution_on_minilm(tmp_path):
    from executors.fixtures import minilm_dir
    from executors.result import ExecutionResult

    job = ExecutionJob.of(CompressionStrategy(quantization=QuantizationSpec(weights="bf16")), round=1, trial=7)
    [m] = execute_jobs(str(tmp_path / "q.db"), "real", [job], model_dir=minilm_dir(), out_dir=tmp_path / "runs",
                       device="cpu", timeout_s=600)
    assert m.status == "ok", m.reason
    result = ExecutionResult.model_validate_json(Path(m.result_path).read_text())
    assert m.quality_retained_pct == pytest.approx(result.quality.retained_pct) and 90 < m.quality_retained_pct <= 100
    assert m.memory_gib == pytest.approx(result.peak_rss_bytes / 2**30) and 0.1 < m.memory_gib < 4
    assert m.latency_ms == pytest.approx(result.latency.median_ms) and m.latency_ms > 0
    assert m.predicted["peak_memory_bytes"] > 0 and m.predicted["quality"] is not None
    assert (m.summary, m.round, m.trial) == ("bf16", 1, 7) and m.seconds > 0


def test_without_a_storage_the_queue_lives_in_the_output_directory(tmp_path, model_dir):
    # a Python search without storage (in memory): the queue is <out_dir>/execution.db, so a re-run resumes
    job = ExecutionJob.of(_strategies()[1])
    [measurement] = execute_jobs(None, "s", [job], model_dir=model_dir, out_dir=tmp_path, **FAST)
    assert measurement.status == "ok" and (tmp_path / "execution.db").is_file()
    again = execute_jobs(optuna.storages.InMemoryStorage(), "s", [job], model_dir=model_dir, out_dir=tmp_path, **FAST)
    assert again == [measurement] and len(calls(tmp_path)) == 2


def test_a_job_whose_workers_keep_dying_comes_back_failed_and_is_queued_again_next_time(tmp_path, model_dir):
    storage, name = str(tmp_path / "q.db"), "exhausted"
    job = ExecutionJob.of(_strategies()[0])
    options = {**FAST, "max_retries": 0}
    returned: list = []
    caller = threading.Thread(target=lambda: returned.extend(execute_jobs(
        storage, name, [job], model_dir=model_dir, out_dir=tmp_path, workers=0, **options)))
    caller.start()
    worker = _worker(storage, name, 600)
    while not calls(tmp_path):
        assert worker.poll() is None, worker.communicate()[1]
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)
    caller.join(timeout=60)
    [measurement] = returned
    assert measurement.status == "failed" and "retries exhausted (max_retries=0)" in measurement.reason
    assert not measurement.measured
    # not stored as measured: the next call queues it again and runs it
    [again] = execute_jobs(storage, name, [job], model_dir=model_dir, out_dir=tmp_path, workers=1, **options)
    assert again.status == "ok" and again.measured and [e for e, _, _ in calls(tmp_path)] == ["start", "start", "end"]


def test_a_job_timeout_kills_the_isolated_run_and_is_a_measured_failure_not_retried(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("FITPLAN_TEST_JOB_S", "30")
    storage = storage_url(tmp_path / "q.db")
    slow = ExecutionJob.of(CompressionStrategy(quantization=QuantizationSpec(weights="nf4")))
    started = time.monotonic()
    [measured] = execute_jobs(storage, "s", [slow.model_copy(update={"timeout_s": 1.5})], model_dir=model_dir,
                              out_dir=tmp_path, **{**FAST, "executor": "tests.execution_helpers:isolated_sleep"})
    assert time.monotonic() - started < 25  # killed, not slept out
    assert measured.status == "failed" and measured.measured
    assert measured.reason == "timed out after 1.5 s during phase 'sleeping' (killed)"
    assert [c[0] for c in calls(tmp_path)] == ["start", "end"]  # run once, never retried
    again = execute_jobs(storage, "s", [slow], model_dir=model_dir, out_dir=tmp_path,
                         **{**FAST, "executor": "tests.execution_helpers:isolated_sleep"})
    assert again[0].reason == measured.reason and len(calls(tmp_path)) == 2  # the failure is kept, not re-run

"""Run chosen strategies for real through a job queue in the search's Optuna storage.

A search that executes its top candidates (``run_search(..., execute_top=K)``) hands them to
:func:`execute_jobs` as :class:`ExecutionJob` s. The jobs live in a second study on the same storage,
the *execution study* ``<study_name>:execute``:

- its user attribute ``fitplan_execution_request`` holds the request (model directory, evaluator,
  evaluation data, device, output directory, per-job timeout, the executor function, heartbeat
  settings), so a worker on another machine needs only the storage URL and the study name
  (``fitplan worker --storage URL --study NAME``; the model directory and output directory can be
  overridden there);
- each job is an enqueued trial (``Study.enqueue_trial``) whose user attribute ``fitplan_job`` is the
  job; a worker takes it by moving it from WAITING to RUNNING (the storage call ``Study.ask`` uses),
  which succeeds for exactly one worker (on SQLite only with :func:`search.storage.open_storage`'s
  ``exclusive_sqlite``; measured in its docstring);
- the worker runs ``executors.execute(model_dir, strategy, evaluator=..., out_dir=..., isolate=True,
  data=...)`` (imported lazily; the executor writes ``result.json`` and a line of ``results.jsonl``
  before anything else happens), stores the :class:`Measurement` in the trial's user attribute
  ``fitplan_measurement`` and completes the trial (its value is the job's wall time in seconds: Optuna
  needs one; nothing optimises it).

Exactly once, never lost:

- **Idempotent enqueue.** :func:`execute_jobs` enqueues only jobs whose key is neither measured nor
  waiting nor running; calling it twice with the same jobs runs none twice.
- **Killed worker.** A running job records an Optuna heartbeat every ``heartbeat_s`` (RDBStorage
  ``heartbeat_interval``); once it is older than ``grace_s`` (``grace_period``), any worker's
  ``optuna.storages.fail_stale_trials`` fails the trial and Optuna's retry callback
  (``RetryHeartbeatStaleTrialCallback``, formerly ``RetryFailedTrialCallback``) enqueues a copy, up to
  ``max_retries`` times; a worker stopped by SIGTERM/SIGINT/SIGHUP re-queues its job at once the same way.
  A job whose retries are exhausted is returned as ``failed`` with ``measured=False`` (its workers kept
  dying) and is not stored as measured, so the next call queues it again.
- **Never twice to completion.** A worker that pops a job whose key is already measured, or running in
  an earlier trial, closes it as a duplicate (PRUNED, user attribute ``fitplan_duplicate_of``) without
  running it; a retry that carries the measurement of a worker killed just after storing it reuses it.
  A worker whose job was failed as stale while it was alive (it froze for longer than ``grace_s``)
  takes over the re-queued copy if no one has started it yet, and otherwise drops its measurement from
  the study (the executor's ``result.json`` keeps it). A worker records the job's heartbeat *before*
  taking it, so no moment leaves a RUNNING job without a heartbeat (Optuna never fails such a trial).
- **Real failures are results.** A strategy that fails when run (crash, out of memory, exception,
  timeout, a step the model cannot take) is a ``status="failed"`` measurement with the reason, not
  retried.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InvalidRequestError

if TYPE_CHECKING:
    import optuna

    from planner.strategy import CompressionStrategy

EXECUTE_SUFFIX = ":execute"
REQUEST_KEY = "fitplan_execution_request"
JOB_KEY = "fitplan_job"
MEASUREMENT_KEY = "fitplan_measurement"
DUPLICATE_KEY = "fitplan_duplicate_of"
WORKER_KEY = "fitplan_worker"
DEFAULT_EXECUTOR = "executors.run:execute"
GIB = 2**30
HOST = socket.gethostname()
MAX_WORKERS = 64


class ExecutionJob(BaseModel):
    """One strategy to execute: ``key`` identifies it (``search.objective.strategy_key``)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="search.objective.strategy_key(strategy): equal strategies, equal keys")
    strategy_json: str = Field(description="CompressionStrategy.to_json()")
    round: int = Field(0, description="the search round that chose it")
    trial: int | None = Field(None, description="number of the main study's trial it came from")
    timeout_s: float | None = Field(None, gt=0, description="this job's timeout, seconds (None: the request's); "
                                    "the isolated run is killed then and measured as failed, 'timed out after N s'")

    @classmethod
    def of(cls, strategy: "CompressionStrategy", *, round: int = 0, trial: int | None = None) -> "ExecutionJob":
        """The job of ``strategy`` with its canonical key."""
        from search.objective import strategy_key

        return cls(key=strategy_key(strategy), strategy_json=strategy.to_json(), round=round, trial=trial)


class Measurement(BaseModel):
    """What executing a job measured (``status="failed"``: the reason; the figures may be None)."""

    model_config = ConfigDict(extra="forbid")

    key: str
    summary: str | None = Field(None, description="the strategy's one-line summary")
    status: Literal["ok", "failed"]
    reason: str | None = Field(None, description="why the strategy failed (crash, OOM, exception, timeout, ...)")
    quality_retained_pct: float | None = Field(None, description="measured quality, % of the uncompressed model")
    memory_gib: float | None = Field(None, description="measured peak: process RSS on CPU, peak allocated on CUDA")
    latency_ms: float | None = Field(None, description="median forward latency of the executor's timed batch")
    predicted: dict[str, Any] | None = Field(None, description="the executor's Prediction (executors.result)")
    result_path: str | None = Field(None, description="the run's result.json")
    worker: str = Field(description="host:pid of the process that ran it (host:pid/N for local thread N)")
    seconds: float = Field(description="wall time of the job, in the worker")
    round: int = 0
    trial: int | None = Field(None, description="the job's main-study trial number")
    measured: bool = Field(True, description="False when no worker finished the job (its workers kept dying, "
                           "retries exhausted): the strategy's own outcome is unknown, and the next call queues "
                           "it again")

    @classmethod
    def from_result(cls, job: ExecutionJob, result: Any, *, worker: str, seconds: float) -> "Measurement":
        """From an ``executors.ExecutionResult`` (memory: CUDA peak allocated on a GPU, else peak RSS)."""
        on_gpu = str(result.device).startswith("cuda")
        peak = result.cuda_peak_allocated_bytes if on_gpu else result.peak_rss_bytes
        return cls(key=job.key, summary=result.strategy_summary, status=result.status, reason=result.reason,
                   quality_retained_pct=result.quality.retained_pct if result.quality is not None else None,
                   memory_gib=peak / GIB if peak is not None else None,
                   latency_ms=result.latency.median_ms if result.latency is not None else None,
                   predicted=result.prediction.model_dump() if result.prediction is not None else None,
                   result_path=result.result_path, worker=worker, seconds=seconds, round=job.round,
                   trial=job.trial)

    @classmethod
    def failure(cls, job: ExecutionJob, reason: str, *, worker: str, seconds: float = 0.0,
                measured: bool = True) -> "Measurement":
        return cls(key=job.key, summary=_strategy(job).summary(), status="failed", reason=reason, worker=worker,
                   seconds=seconds, round=job.round, trial=job.trial, measured=measured)


class ExecutionRequest(BaseModel):
    """How every job of an execution study is run (stored in the study; workers read it)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str
    evaluator: str | None = None
    eval_data: str | None = None
    device: str = "auto"
    out_dir: str
    timeout_s: float | None = None
    executor: str = Field(DEFAULT_EXECUTOR, description="module:function called like executors.execute")
    heartbeat_s: int = 10
    grace_s: int = 60
    max_retries: int = 3

    def identity(self) -> dict[str, Any]:
        """What must not change between calls on one study (the measurements would not be comparable)."""
        return {"model_dir": self.model_dir, "evaluator": self.evaluator, "eval_data": self.eval_data,
                "device": self.device, "executor": self.executor}


def execution_study_name(study_name: str) -> str:
    """``<study_name>:execute`` (a name that already ends so is kept)."""
    return study_name if study_name.endswith(EXECUTE_SUFFIX) else study_name + EXECUTE_SUFFIX


def require_exec_extra() -> None:
    """Raise one InvalidRequestError when torch, transformers or bitsandbytes is missing."""
    from executors._imports import EXEC_PACKAGES, INSTALL_HINT

    missing = [name for name in EXEC_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InvalidRequestError(f"executing candidates needs {', '.join(missing)}, which {verb} not installed; "
                                  f"{INSTALL_HINT}.")


# -- the public entry points ----------------------------------------------------------------------------------
def execute_jobs(storage: Any, study_name: str, jobs: Sequence[ExecutionJob | dict], *, model_dir: str | os.PathLike,
                 evaluator: str | None = None, eval_data: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike, workers: int = 1, device: str = "auto", timeout_s: float | None = None,
                 progress: bool = False, executor: str = DEFAULT_EXECUTOR, heartbeat_s: int = 10,
                 grace_s: int = 60, max_retries: int = 3, poll_s: float = 1.0) -> list[Measurement]:
    """Execute ``jobs`` (once each, across every worker of the study) and return their measurements.

    ``storage``: an Optuna ``RDBStorage``, a SQLAlchemy URL or a SQLite path (the search's; None or an
    in-memory storage: ``<out_dir>/execution.db``, for local workers). Jobs whose key
    is already measured or queued in ``<study_name>:execute`` are not queued again. ``workers`` threads of
    this process run jobs (0 = only remote ``fitplan worker`` processes); the call returns when every job
    of ``jobs`` is measured, by any worker, in the order of ``jobs``. ``evaluator``: 'perplexity',
    'fidelity', 'accuracy' or None (the model kind's default); ``eval_data``: the user's evaluation file
    (its path must be readable by every worker). ``timeout_s``: per job. ``executor``: ``module:function``
    called like ``executors.execute`` (default; a worker imports it by name, so it must be importable
    there). ``heartbeat_s`` / ``grace_s`` / ``max_retries``: how a killed worker's job is detected and
    re-queued (see the module docstring). Raises InvalidRequestError for a bad request, before anything
    is queued; the first call on a study fixes its model, evaluator, data, device and executor.

    Several local workers share this machine's cores: each job's memory is its own process's, but its
    latency is measured under the others' load. Use ``workers=1`` (and remote workers for throughput) when
    latency matters.
    """
    workers = _count("workers", workers, 0, MAX_WORKERS)
    _count("heartbeat_s", heartbeat_s, 1, 3600)
    _count("max_retries", max_retries, 0, 100)
    if _count("grace_s", grace_s, 1, 86400) < 2 * heartbeat_s:
        raise InvalidRequestError(f"grace_s ({grace_s}) must be at least twice heartbeat_s ({heartbeat_s}), or live "
                                  "workers would be taken for dead.")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
                                      and timeout_s > 0):
        raise InvalidRequestError(f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}.")
    if evaluator is not None and not isinstance(evaluator, str):
        raise InvalidRequestError("evaluator must be a name ('perplexity', 'fidelity', 'accuracy') or None: remote "
                                  f"workers rebuild it from the stored request; got {type(evaluator).__name__}.")
    jobs = [job if isinstance(job, ExecutionJob) else ExecutionJob.model_validate(job) for job in jobs]
    request = ExecutionRequest(
        model_dir=str(Path(model_dir).expanduser().resolve()), evaluator=evaluator,
        eval_data=str(Path(eval_data).expanduser().resolve()) if eval_data is not None else None, device=device,
        out_dir=str(Path(out_dir).expanduser().resolve()), timeout_s=timeout_s, executor=executor,
        heartbeat_s=heartbeat_s, grace_s=grace_s, max_retries=max_retries)
    check_request(request)
    for job in jobs:
        _strategy(job)
    if not jobs:
        return []
    queue = _Queue.open(storage, study_name, request)
    queue.enqueue(jobs)
    keys = list(dict.fromkeys(job.key for job in jobs))
    done = threading.Event()
    threads = [threading.Thread(target=queue.work, args=(f"{queue.worker}/{index}", done), daemon=True,
                                name=f"fitplan-execute-{index}") for index in range(1, workers + 1)]
    bar = _ProgressBar(len(keys)) if progress else None
    found: dict[str, Measurement] = {}
    try:
        if bar is not None:
            bar.start()
        for thread in threads:
            thread.start()
        while True:
            found = queue.wait_round(jobs, keys)
            if bar is not None:
                bar.update(found)
            if len(found) == len(keys):
                break
            time.sleep(poll_s)
    except BaseException:
        done.set()
        queue.requeue_held("this process was interrupted while the job ran")
        raise
    finally:
        done.set()
        if bar is not None:
            bar.stop()
    for thread in threads:
        thread.join()
    return [found[job.key] for job in jobs]


def run_worker(storage: Any, study_name: str, *, model_dir: str | os.PathLike | None = None,
               out_dir: str | os.PathLike | None = None, eval_data: str | os.PathLike | None = None,
               max_jobs: int | None = None, idle_exit_s: float | None = None, poll_s: float = 2.0,
               report: Callable[[Measurement], None] | None = None, progress: bool = False) -> int:
    """Pull and run jobs of ``<study_name>:execute`` in this process, one at a time; returns how many ran.

    The request (evaluator, data, device, executor, timeouts) comes from the study; ``model_dir``,
    ``out_dir`` and ``eval_data`` override its paths for this machine (the same model and data files at
    other paths). Stops after
    ``max_jobs`` jobs, or after ``idle_exit_s`` seconds with nothing to run (None = keep waiting for
    jobs). While the execution study does not exist yet, it waits for it.
    ``report`` is called with each measurement; ``progress``: say on stderr what it runs and waits for.
    SIGTERM/SIGINT/SIGHUP while a job runs: the job is re-queued for another worker at once and the
    interruption propagates (KeyboardInterrupt).
    """
    if max_jobs is not None:
        _count("max_jobs", max_jobs, 1, 10**9)
    if idle_exit_s is not None and not (math.isfinite(idle_exit_s) and idle_exit_s >= 0):
        raise InvalidRequestError(f"idle_exit_s must be a non-negative number of seconds, got {idle_exit_s!r}.")
    start = time.monotonic()
    request = _wait_for_request(storage, study_name, idle_exit_s, poll_s, progress)
    if request is None:
        return 0
    overrides = {}
    if model_dir is not None:
        overrides["model_dir"] = str(Path(model_dir).expanduser().resolve())
    if out_dir is not None:
        overrides["out_dir"] = str(Path(out_dir).expanduser().resolve())
    if eval_data is not None:
        if request.eval_data is None:
            raise InvalidRequestError("this search evaluates on the evaluator's built-in data; a worker cannot "
                                      "change it (drop --eval-data).")
        overrides["eval_data"] = str(Path(eval_data).expanduser().resolve())
    request = request.model_copy(update=overrides)
    check_request(request)
    queue = _Queue.open(storage, study_name, request, create=False)
    if progress:
        print(f"fitplan worker {queue.worker}: running the jobs of {execution_study_name(study_name)!r} "
              f"(model {request.model_dir}, results in {request.out_dir})", file=sys.stderr, flush=True)
    ran, idle_since = 0, time.monotonic()
    with _stop_signals_interrupt():
        while max_jobs is None or ran < max_jobs:
            trial = queue.pop()
            if trial is None:
                if idle_exit_s is not None and time.monotonic() - max(idle_since, start) >= idle_exit_s:
                    break
                time.sleep(poll_s)
                continue
            measurement = queue.run(trial, queue.worker)
            idle_since = time.monotonic()
            if measurement is not None:
                ran += 1
                if report is not None:
                    report(measurement)
    return ran


def check_request(request: ExecutionRequest) -> None:
    """Refuse a request no worker could run (one InvalidRequestError), before anything is queued or taken."""
    module_name, _, function = request.executor.partition(":")
    if not module_name or not function:
        raise InvalidRequestError(f"executor must be 'module:function', got {request.executor!r}.")
    from executors.paths import writable_directory

    writable_directory(request.out_dir, "out_dir")
    if request.executor == DEFAULT_EXECUTOR:
        require_exec_extra()
        from executors.evaluate import check_evaluation_data, get_evaluator
        from executors.loading import check_device, model_kind, resolve_device

        kind = model_kind(Path(request.model_dir))
        check_evaluation_data(get_evaluator(request.evaluator, kind, data=request.eval_data), request.model_dir)
        if check_device(request.device).startswith("cuda"):
            resolve_device(request.device)  # imports torch: a worker without the GPU refuses, not every job fails
    elif not Path(request.model_dir).is_dir():
        raise InvalidRequestError(f"model directory {request.model_dir!r} does not exist.")
    _executor(request)


# -- the queue --------------------------------------------------------------------------------------------------
class _Queue:
    """One execution study opened with heartbeats, retries and exclusive pops (shared by this process's
    worker threads: Optuna's RDBStorage gives each thread its own session)."""

    def __init__(self, study: "optuna.Study", storage: Any, request: ExecutionRequest, retry: Any):
        self.study, self.storage, self.request, self.retry = study, storage, request, retry
        self.study_id = study._study_id  # noqa: SLF001 - the storage API addresses studies by id
        self.worker = f"{HOST}:{os.getpid()}"
        self.execute = _executor(request)
        self._held: dict[int, str] = {}  # trial id -> worker, of the jobs this process runs now
        self._lock = threading.Lock()
        self._orphaned: dict[str, float] = {}

    @classmethod
    def open(cls, storage: Any, study_name: str, request: ExecutionRequest, *, create: bool = True) -> "_Queue":
        import optuna

        from search.storage import open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        with _quiet_optuna():
            if retry_class is not None:
                retry = retry_class(max_retry=request.max_retries)
                options = {"heartbeat_stale_trial_callback": retry}
            else:  # optuna < 4.9
                retry = optuna.storages.RetryFailedTrialCallback(max_retry=request.max_retries)
                options = {"failed_trial_callback": retry}
            store = open_storage(_url(storage, request.out_dir if create else None), exclusive_sqlite=True,
                                 heartbeat_interval=request.heartbeat_s, grace_period=request.grace_s, **options)
        name = execution_study_name(study_name)
        if create:
            study = optuna.create_study(storage=store, study_name=name, direction="minimize", load_if_exists=True)
            recorded = store.get_study_user_attrs(study._study_id).get(REQUEST_KEY)  # noqa: SLF001
            if recorded is not None:
                old = ExecutionRequest.model_validate(recorded)
                if old.identity() != request.identity():
                    differing = [k for k, v in request.identity().items() if old.identity()[k] != v]
                    raise InvalidRequestError(
                        f"execution study {name!r} runs {', '.join(f'{k}={old.identity()[k]!r}' for k in differing)};"
                        f" this call asks for {', '.join(f'{k}={request.identity()[k]!r}' for k in differing)}. "
                        f"Measurements of both would be mixed: use another study name.")
            if recorded != request.model_dump():
                study.set_user_attr(REQUEST_KEY, request.model_dump())
        else:
            study = optuna.load_study(storage=store, study_name=name)
        return cls(study, store, request, retry)

    # enqueue and status ---------------------------------------------------------------------------------
    def _trials(self) -> list["optuna.trial.FrozenTrial"]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False)

    def enqueue(self, jobs: Sequence[ExecutionJob]) -> int:
        """Queue the jobs whose key is neither measured nor waiting nor running; returns how many."""
        from optuna.trial import TrialState

        live = (TrialState.WAITING, TrialState.RUNNING)
        taken = {_job(t).key for t in self._trials()
                 if JOB_KEY in t.user_attrs and (MEASUREMENT_KEY in t.user_attrs or t.state in live)}
        added = 0
        for job in jobs:
            if job.key not in taken:
                self.study.enqueue_trial({}, user_attrs={JOB_KEY: job.model_dump()})
                taken.add(job.key)
                added += 1
        return added

    def wait_round(self, jobs: Sequence[ExecutionJob], keys: Sequence[str]) -> dict[str, Measurement]:
        """Fail stale trials (re-queueing them), then the measurements found so far for ``keys``; a key
        whose retries are exhausted gets a failed measurement; a key left neither measured nor queued
        (a worker died between failing its trial and re-queueing it) is queued again after ``grace_s``."""
        from optuna.trial import TrialState

        self.fail_stale()
        by_key: dict[str, list[Any]] = {key: [] for key in keys}
        for trial in self._trials():
            if JOB_KEY in trial.user_attrs and trial.user_attrs[JOB_KEY]["key"] in by_key:
                by_key[trial.user_attrs[JOB_KEY]["key"]].append(trial)
        found: dict[str, Measurement] = {}
        orphans = []
        for key, trials in by_key.items():
            measured = [t for t in trials if MEASUREMENT_KEY in t.user_attrs]
            if measured:
                best = min(measured, key=lambda t: (t.state != TrialState.COMPLETE, t.number))
                found[key] = Measurement.model_validate(best.user_attrs[MEASUREMENT_KEY])
                continue
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
                self._orphaned.pop(key, None)
                continue
            failed = [t for t in trials if t.state == TrialState.FAIL]
            job = next(j for j in jobs if j.key == key)
            if failed and max(len(_history(t)) + 1 for t in failed) > self.request.max_retries:
                found[key] = Measurement.failure(
                    job, f"not measured: the workers running it stopped {len(failed)} times (heartbeat lost or "
                    f"interrupted); retries exhausted (max_retries={self.request.max_retries})", worker=self.worker,
                    measured=False)
                continue
            since = self._orphaned.setdefault(key, time.monotonic())
            if time.monotonic() - since >= self.request.grace_s:
                orphans.append(job)
                self._orphaned.pop(key)
        if orphans:
            self.enqueue(orphans)
        return found

    # taking and running jobs ------------------------------------------------------------------------------
    def fail_stale(self) -> None:
        import optuna

        with _quiet_optuna():
            optuna.storages.fail_stale_trials(self.study)

    def pop(self) -> "optuna.trial.FrozenTrial | None":
        """Take the oldest waiting job (WAITING -> RUNNING succeeds for exactly one worker), or None."""
        from optuna.trial import TrialState

        self.fail_stale()
        for trial in self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)):
            if self._claim(trial._trial_id):  # noqa: SLF001
                return self.storage.get_trial(trial._trial_id)  # noqa: SLF001
        return None

    def _claim(self, trial_id: int) -> bool:
        """WAITING -> RUNNING, with a heartbeat recorded first: a worker killed right after taking the job
        still leaves a heartbeat that goes stale (a waiting trial's heartbeat is ignored; one taken by
        another worker at the same moment just gets a fresh one)."""
        import optuna
        from optuna.trial import TrialState

        self.storage.record_heartbeat(trial_id)
        try:
            return self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def work(self, worker: str, done: threading.Event) -> None:
        """A local worker thread: run jobs until ``done`` is set. A storage error is reported and retried (the
        job it hit goes back to the queue when its heartbeat goes stale); a lasting one stops the caller,
        whose own polling raises it."""
        while not done.is_set():
            try:
                trial = self.pop()
                if trial is not None:
                    self.run(trial, worker)
                    continue
            except Exception as error:  # noqa: BLE001 - the thread must outlive a transient database error
                print(f"fitplan execute {worker}: {type(error).__name__}: {error}; retrying", file=sys.stderr)
            done.wait(1.0)

    def run(self, trial: "optuna.trial.FrozenTrial", worker: str) -> Measurement | None:
        """Run the taken job ``trial`` and store its measurement; None when it was a duplicate."""
        trial_id = trial._trial_id  # noqa: SLF001
        job = _job(trial)
        with self._holding(trial_id, worker), _heartbeat(self.storage, trial_id, self.request.heartbeat_s):
            self.storage.set_trial_user_attr(trial_id, WORKER_KEY, worker)
            stored = trial.user_attrs.get(MEASUREMENT_KEY)
            if stored is not None:  # a retry of a job whose worker died after storing its measurement
                measurement = Measurement.model_validate(stored)
                self._complete(trial_id, measurement)
                return measurement
            earlier = self._duplicate_of(job.key, trial.number)
            if earlier is not None:
                self.storage.set_trial_user_attr(trial_id, DUPLICATE_KEY, earlier)
                self._finish(trial_id, "PRUNED")
                return None
            start = time.monotonic()
            try:
                result = self.execute(self.request.model_dir, _strategy(job), evaluator=self.request.evaluator,
                                      out_dir=self.request.out_dir, isolate=True, data=self.request.eval_data,
                                      device=self.request.device,
                                      timeout_s=job.timeout_s if job.timeout_s is not None else self.request.timeout_s)
                measurement = Measurement.from_result(job, result, worker=worker, seconds=time.monotonic() - start)
            except KeyboardInterrupt:
                self.requeue_held(f"{worker} was interrupted while the job ran")
                raise
            except Exception as error:  # the strategy failed for real: a result, not retried
                measurement = Measurement.failure(job, f"{type(error).__name__}: {error}", worker=worker,
                                                  seconds=time.monotonic() - start)
        self._store(trial_id, job, measurement)
        return measurement

    def _duplicate_of(self, key: str, number: int) -> int | None:
        """The trial number that already measured ``key``, or that runs it and was queued earlier."""
        from optuna.trial import TrialState

        for other in self._trials():
            if other.number == number or JOB_KEY not in other.user_attrs or _job(other).key != key:
                continue
            if MEASUREMENT_KEY in other.user_attrs or (other.state == TrialState.RUNNING and other.number < number):
                return other.number
        return None

    def _store(self, trial_id: int, job: ExecutionJob, measurement: Measurement) -> None:
        """Store and complete; if the trial was failed as stale meanwhile, take over its waiting retry."""
        import optuna
        from optuna.trial import TrialState

        try:
            self._complete(trial_id, measurement)
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        for other in self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,)):
            other_id = other._trial_id  # noqa: SLF001
            if JOB_KEY in other.user_attrs and _job(other).key == job.key and self._claim(other_id):
                self._complete(other_id, measurement)
                return
        print(f"fitplan worker {measurement.worker}: job {job.key[:60]} was re-queued while it ran (no heartbeat for "
              f"{self.request.grace_s} s) and another worker took it; this run's result stays in "
              f"{measurement.result_path}", file=sys.stderr)

    def _complete(self, trial_id: int, measurement: Measurement) -> None:
        self.storage.set_trial_user_attr(trial_id, MEASUREMENT_KEY, measurement.model_dump())
        self._finish(trial_id, "COMPLETE", [measurement.seconds])

    def _finish(self, trial_id: int, state: str, values: list[float] | None = None) -> None:
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(trial_id, state=TrialState[state], values=values)

    @contextmanager
    def _holding(self, trial_id: int, worker: str) -> Iterator[None]:
        with self._lock:
            self._held[trial_id] = worker
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(trial_id, None)

    def requeue_held(self, why: str) -> None:
        """Fail the jobs this process holds and re-queue them through the retry callback (interruption)."""
        import optuna
        from optuna.trial import TrialState

        with self._lock:
            held = list(self._held)
            self._held.clear()
        for trial_id in held:
            try:
                self.storage.set_trial_user_attr(trial_id, "fitplan_interrupted", why)
                if self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    self.retry(self.study, self.storage.get_trial(trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


# -- helpers ----------------------------------------------------------------------------------------------------
def _count(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a whole number from {low} to {high:,}, got {value!r}.")
    return value


def _url(storage: Any, out_dir: str | None = None) -> str:
    """The storage's URL; ``None`` or an in-memory storage (a Python search without ``storage``) with an
    ``out_dir``: a SQLite file ``<out_dir>/execution.db`` (local workers only, and a re-run resumes)."""
    import optuna

    storage = getattr(storage, "_backend", storage)  # a study's storage is a cache in front of the RDB storage
    if out_dir is not None and (storage is None or isinstance(storage, optuna.storages.InMemoryStorage)):
        return f"sqlite:///{Path(out_dir) / 'execution.db'}"
    if isinstance(storage, optuna.storages.RDBStorage):
        return storage.url
    if isinstance(storage, optuna.storages.BaseStorage):
        raise InvalidRequestError("executing candidates needs a database storage (a SQLite file or PostgreSQL URL) "
                                  f"that workers can share; got {type(storage).__name__}.")
    from search.storage import storage_url

    return storage_url(storage)


def _executor(request: ExecutionRequest) -> Callable[..., Any]:
    module_name, _, name = request.executor.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise InvalidRequestError(f"executor {request.executor!r} cannot be imported here: {error}") from None
    if not callable(function):
        raise InvalidRequestError(f"executor {request.executor!r} is not callable.")
    return function


def _strategy(job: ExecutionJob) -> "CompressionStrategy":
    from planner.strategy import CompressionStrategy

    try:
        return CompressionStrategy.from_json(job.strategy_json)
    except Exception as error:  # noqa: BLE001 - any parse/validation error is the job's mistake
        raise InvalidRequestError(f"job {job.key[:80]!r}: strategy_json is not a strategy ({error}).") from None


def _job(trial: Any) -> ExecutionJob:
    return ExecutionJob.model_validate(trial.user_attrs[JOB_KEY])


def _history(trial: Any) -> list[int]:
    return list(trial.system_attrs.get("retry_history", []))


def _wait_for_request(storage: Any, study_name: str, idle_exit_s: float | None, poll_s: float,
                      progress: bool) -> ExecutionRequest | None:
    """The stored request; waits while the execution study does not exist yet (workers may start before
    the search queues its first jobs; the message lists the studies there, so a misspelt name shows)."""
    import optuna

    from search.storage import open_storage

    store = open_storage(_url(storage))
    name = execution_study_name(study_name)
    start, said = time.monotonic(), False
    while True:
        try:
            recorded = optuna.load_study(study_name=name, storage=store).user_attrs.get(REQUEST_KEY)
            if recorded is not None:
                return ExecutionRequest.model_validate(recorded)
        except KeyError:
            pass
        if not said and progress:
            names = sorted({s.study_name.removesuffix(EXECUTE_SUFFIX)
                            for s in optuna.get_all_study_summaries(store, include_best_trial=False)})
            from hardware_db.names import did_you_mean

            search = study_name.removesuffix(EXECUTE_SUFFIX)
            if search in names:
                there = ""
            else:  # the search has not started yet, or the name is misspelt
                listing = f"studies there: {', '.join(names[:10])}" if names else "the storage has no studies yet"
                there = f" ({listing}){'.' + did_you_mean(search, names) if names else ''}"
            print(f"fitplan worker: waiting for search {search!r} to queue jobs{there}", file=sys.stderr, flush=True)
        said = True
        if idle_exit_s is not None and time.monotonic() - start >= idle_exit_s:
            return None
        time.sleep(poll_s)


@contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does, so a stopped worker re-queues its job at
    once instead of leaving it to the heartbeat (main thread only: Python delivers signals there)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def _heartbeat(storage: Any, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat now and every ``interval`` seconds while the block runs."""
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried; only a long silence re-queues the job
                pass

    thread = threading.Thread(target=beat, daemon=True, name=f"fitplan-heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna marks heartbeats and the retry callback experimental; fitplan relies on them knowingly."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


class _ProgressBar:
    """A rich progress bar on stderr: jobs measured of the call, and the last one's figures."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("execute"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=Console(stderr=True))
        self.task = self.progress.add_task("", total=total)
        self.seen: set[str] = set()

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, found: dict[str, Measurement]) -> None:
        new = [m for key, m in found.items() if key not in self.seen]
        if not new:
            return
        self.seen.update(m.key for m in new)
        self.progress.update(self.task, completed=len(self.seen), description=describe(new[-1])[:70])


def describe(measurement: Measurement) -> str:
    """One line: status, quality, memory, latency, worker (the worker CLI and the progress bar print it)."""
    if measurement.status != "ok":
        return f"failed: {measurement.reason}"
    parts = [f"{measurement.quality_retained_pct:.1f}%" if measurement.quality_retained_pct is not None else None,
             f"{measurement.memory_gib:.2f} GiB" if measurement.memory_gib is not None else None,
             f"{measurement.latency_ms:.0f} ms" if measurement.latency_ms is not None else None]
    return "ok " + " ".join(p for p in parts if p) + f" ({measurement.worker}, {measurement.seconds:.0f} s)"

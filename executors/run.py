"""``execute``: apply a compression strategy to a model for real, measure it, and put the planner's
predictions next to the measurements.

By default each candidate runs in its own process (:mod:`executors.isolation`): its peak memory is its
own, and a crash, an out-of-memory kill or a timeout becomes ``status="failed"`` while the caller
carries on. The baseline's reference outputs (what quality is compared with) are computed once per
model and evaluator, in their own process, and cached (:mod:`executors.evaluate.reference`).

Results are never lost or crossed. Every call gets its own run directory,
``<out_dir>/<candidate>/<run id>/`` (the run id is the UTC start time plus a random suffix; the
directory is created exclusively), which holds ``request.json`` (written before anything runs), the
isolated jobs' files (``reference/``, ``job/``), ``work/``, the saved ``model/`` and ``result.json``.
Re-running a strategy, or two processes running the same one into the same ``out_dir`` at once,
therefore never share or overwrite a file. The result is written as soon as it exists and one line is
appended to ``<out_dir>/results.jsonl`` under an exclusive lock, before predictions are added (which
then rewrite ``result.json``), so no measurement is lost if anything later fails.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from executors.evaluate import EvaluatorLike, check_evaluation_data, get_evaluator
from executors.evaluate.base import fingerprint
from executors.loading import model_kind
from executors.isolation import PhaseCallback
from executors.result import ExecutionResult, append_jsonl
from planner.errors import InvalidRequestError
from planner.strategy import CompressionStrategy

RESULT_FILE = "result.json"
REQUEST_FILE = "request.json"
RESULTS_LOG = "results.jsonl"
PHASE_LABELS = {"startup": "starting (importing torch)", "reference": "computing (once per model and evaluator)",
                "load": "loading the model", "compress": "applying the compression steps",
                "evaluate": "evaluating quality", "speed": "timing forwards", "save": "saving the model",
                "machine-profile": "measuring this machine's memory baseline for predictions (once)"}
GIB = 2**30

StrategyLike = CompressionStrategy | dict | str | None


def as_strategy(strategy: StrategyLike) -> CompressionStrategy:
    if strategy is None:
        return CompressionStrategy()
    if isinstance(strategy, CompressionStrategy):
        return strategy
    if isinstance(strategy, str):
        return CompressionStrategy.from_json(strategy)
    if isinstance(strategy, dict):
        return CompressionStrategy.model_validate(strategy)
    raise InvalidRequestError(f"a strategy must be a CompressionStrategy, a dict or its JSON; got "
                              f"{type(strategy).__name__}.")


def candidate_name(strategy: CompressionStrategy, model_dir: Path, evaluator_key: str) -> str:
    """A readable, unique directory name: the summary as a slug plus a short hash of the request."""
    slug = re.sub(r"[^a-z0-9.]+", "-", strategy.summary().lower()).strip("-")[:60] or "baseline"
    return f"{slug}-{fingerprint([strategy.to_json(), str(model_dir.resolve()), evaluator_key])[:8]}"


def execute(model: str | os.PathLike, strategy: StrategyLike = None, *, evaluator: EvaluatorLike = None,
            device: str = "auto", out_dir: str | os.PathLike | None = None, timeout_s: float | None = None,
            isolate: bool = True, memory_cap_bytes: int | None = None, save: bool = False, speed: bool = True,
            corpus: str | os.PathLike | list[str] | None = None, seed: int = 0, progress: bool = False,
            data: str | os.PathLike | None = None) -> ExecutionResult:
    """Apply ``strategy`` to the model directory ``model`` and measure the result.

    ``evaluator``: 'perplexity', 'fidelity', 'accuracy', an evaluator object or a function
    ``(model, tokenizer) -> float`` (higher is better); None = perplexity for causal LMs, fidelity for
    encoders. ``device``: 'auto', 'cpu' or 'cuda[:N]'. ``out_dir``: where results (and the saved
    model with ``save``) go; None = a temporary directory. Each call gets its own run directory
    ``<out_dir>/<candidate>/<run id>/`` (see the module docstring). ``timeout_s`` / ``memory_cap_bytes``
    bound the isolated process (positive and finite; with ``isolate=False`` nothing could enforce them,
    so passing them is an error). ``isolate=False`` runs in this process: faster, but the peaks then
    include whatever this process already holds. ``corpus``: training/calibration text for the steps
    (default: pydoc topics; a text, JSONL, CSV file or saved dataset, see :mod:`executors.datafiles`).
    ``data``: the user's evaluation data for a built-in evaluator (text or JSONL for perplexity,
    sentences for fidelity, CSV/JSONL with a label column for accuracy). ``speed``: measure forward
    latency. ``progress``: print each phase on stderr as it starts (and the steps' progress bars of an
    in-process run).

    User mistakes (missing directory, invalid strategy, evaluator that does not fit the model, bad
    limits, an output directory that cannot be written) raise a FitplanError before anything runs;
    anything that goes wrong while running the candidate returns ``status="failed"``. Interrupted
    (SIGTERM, SIGINT, SIGHUP while an isolated run waits): the worker is killed, a ``failed`` result
    saying so is saved, and :class:`executors.isolation.Interrupted` propagates.
    """
    from executors.isolation import check_limits, write_json_atomic
    from executors.loading import check_device
    from executors.paths import new_run_dir, writable_directory

    from planner.models.directory import check_model_dir

    check_model_dir(model, "model")
    model_dir = Path(model).expanduser()
    kind = model_kind(model_dir)
    plan = as_strategy(strategy)
    from executors.preflight import check_strategy

    check_strategy(model_dir, plan)  # a structural step the model cannot take is refused before any work
    chosen = get_evaluator(evaluator, kind, data=data)
    check_evaluation_data(chosen, model_dir)
    if corpus is not None:
        from executors.corpus import load_corpus

        load_corpus(corpus)  # a missing, unreadable or too small file fails here, before any work
        corpus = str(Path(corpus).expanduser().resolve()) if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    if isolate:
        chosen.spec()  # a non-importable callable fails here, with its own message
    check_device(device)
    check_limits(timeout_s, memory_cap_bytes)
    if not isolate and (timeout_s is not None or memory_cap_bytes is not None):
        raise InvalidRequestError("timeout_s and memory_cap_bytes bound the isolated process; an in-process run "
                                  "(isolate=False) cannot enforce them: drop them or run isolated.")
    root = (writable_directory(out_dir, "out_dir") if out_dir is not None
            else Path(tempfile.mkdtemp(prefix="fitplan-run-")))
    run_id, run_dir = new_run_dir(root, candidate_name(plan, model_dir, chosen.key()))
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    request = {
        "model_dir": str(model_dir.resolve()), "strategy": json.loads(plan.to_json()), "device": device,
        "evaluator": chosen.spec() if isolate else None, "corpus": corpus, "seed": seed, "isolated": isolate,
        "save_dir": str(run_dir / "model") if save else None, "work_dir": str(run_dir / "work"),
        "speed": {} if speed else None, "progress_bar": progress and not isolate,
    }
    write_json_atomic(run_dir / REQUEST_FILE, {"run_id": run_id, "started_at": started_at, "pid": os.getpid(),
                                               "request": request})
    report = _progress_printer(run_id) if progress else None
    start = time.monotonic()
    try:
        if isolate:
            result = _run_isolated(request, plan, kind, run_dir, timeout_s, memory_cap_bytes, report)
        else:
            result = _run_in_process(request, plan, kind, chosen, run_dir, report)
    except KeyboardInterrupt as stop:  # executors.isolation.Interrupted included
        how = getattr(stop, "signal_name", "SIGINT")
        stopped = "; its worker was stopped" if isolate else ""
        result = _failed(request, plan, kind, f"interrupted: this process received {how} while the candidate "
                         f"ran{stopped}", job_dir=str(run_dir))
        _persist(result, root, run_dir, run_id, started_at, start)
        raise
    _persist(result, root, run_dir, run_id, started_at, start)
    if isolate and result.device == "cpu":
        _measure_machine_once(result, report)
    from executors.predict import attach_predictions

    attach_predictions(result, plan)
    result.save(run_dir / RESULT_FILE)
    return result


def _persist(result: ExecutionResult, root: Path, run_dir: Path, run_id: str, started_at: str,
             start: float) -> None:
    """Save the result in its run directory and append it to ``results.jsonl`` (locked) at once: the
    measurement is on disk before predictions (or anything else) can fail."""
    result.run_id, result.started_at, result.run_dir = run_id, started_at, str(run_dir)
    result.wall_seconds = time.monotonic() - start
    result.result_path = str(run_dir / RESULT_FILE)
    result.save(run_dir / RESULT_FILE)
    append_jsonl(root / RESULTS_LOG, result.model_dump_json())


def _measure_machine_once(result: ExecutionResult, report: PhaseCallback | None) -> None:
    """The CPU memory prediction's machine part (executors.machine_profile): measured on the first
    isolated CPU run on this machine and software stack, cached after. A failure leaves the reference
    machine's figures in use, with a note."""
    from executors.machine_profile import ensure_machine_profile
    from planner.memory.cpu import cached_machine_profile

    if cached_machine_profile() is not None:
        return
    if report is not None:
        report("machine-profile", None)
    try:
        ensure_machine_profile()
    except Exception as error:  # a prediction aid: never costs the measured result
        result.notes.append(f"this machine's memory profile could not be measured ({error}); the CPU memory "
                            f"prediction uses the reference machine's")


def _progress_printer(run_id: str) -> PhaseCallback:
    """Print one line on stderr per phase: ``fitplan run <id>: <seconds> s  <phase>``."""
    start = time.monotonic()

    def report(phase: str, _seconds: float | None = None) -> None:
        prefix, _, name = phase.rpartition(" ")
        label = f"{prefix} {PHASE_LABELS.get(name, name)}".strip()
        print(f"fitplan run {run_id}: {time.monotonic() - start:6.1f} s  {label}", file=sys.stderr, flush=True)

    return report


def _failed(request: dict[str, Any], plan: CompressionStrategy, kind: str, reason: str,
            **fields: Any) -> ExecutionResult:
    return ExecutionResult(status="failed", reason=reason, model_dir=request["model_dir"], model_kind=kind,
                           strategy=request["strategy"], strategy_summary=plan.summary(), device=request["device"],
                           isolated=request["isolated"], **fields)


def _run_isolated(request: dict[str, Any], plan: CompressionStrategy, kind: str, run_dir: Path,
                  timeout_s: float | None, memory_cap_bytes: int | None,
                  report: PhaseCallback | None) -> ExecutionResult:
    from executors.evaluate import evaluator_from_spec
    from executors.evaluate.reference import has_reference
    from executors.isolation import run_isolated

    evaluator = evaluator_from_spec(request["evaluator"])
    reference_cached = has_reference(request["model_dir"], evaluator)
    if not reference_cached:
        on_phase = (lambda phase, seconds: report(f"baseline {phase}", seconds)) if report else None
        outcome = run_isolated("executors.candidate:compute_reference", request, run_dir / "reference",
                               timeout_s=timeout_s, memory_cap_bytes=memory_cap_bytes, on_phase=on_phase)
        if outcome.status != "ok":
            return _failed(request, plan, kind, f"computing the baseline reference failed: {outcome.reason}",
                           job_dir=outcome.job_dir)
    outcome = run_isolated("executors.candidate:run_candidate", request, run_dir / "job",
                           timeout_s=timeout_s, memory_cap_bytes=memory_cap_bytes, on_phase=report)
    if outcome.status != "ok":
        notes = [f"stderr tail: {outcome.stderr_tail.strip()[-500:]}"] if outcome.stderr_tail.strip() else []
        notes.append("peak_rss_bytes of a failed run: the child's own peak since its last phase started, or the "
                     "highest RSS the parent's polls saw when it died without reporting")
        return _failed(request, plan, kind, outcome.reason or "failed", peak_rss_bytes=outcome.max_rss_bytes,
                       job_dir=outcome.job_dir, notes=notes)
    return _from_payload(request, plan, outcome.payload, peak_rss=outcome.max_rss_bytes, job_dir=outcome.job_dir,
                         reference_cached=reference_cached)


def _run_in_process(request: dict[str, Any], plan: CompressionStrategy, kind: str, evaluator: Any,
                    run_dir: Path, report: PhaseCallback | None) -> ExecutionResult:
    from executors.candidate import compute_reference, run_candidate

    def progress(phase: str) -> None:
        if report is not None:
            report(phase, None)

    try:
        reference = compute_reference(request, lambda phase: progress(f"baseline {phase}"), evaluator=evaluator)
        payload = run_candidate(request, progress, evaluator=evaluator)
    except Exception as error:  # the candidate's failure is a result, as in the isolated runner
        return _failed(request, plan, kind, f"{type(error).__name__}: {error}", job_dir=str(run_dir))
    return _from_payload(request, plan, payload, peak_rss=None, job_dir=str(run_dir),
                         reference_cached=reference["cached"])


def _from_payload(request: dict[str, Any], plan: CompressionStrategy, payload: dict[str, Any],
                  peak_rss: int | None, job_dir: str, reference_cached: bool) -> ExecutionResult:
    phases = payload["phases"]
    by_name = {p["name"]: p for p in phases}
    # The phases cover the child's whole life, so their highest peak is the run's peak (the child's
    # VmHWM at exit only covers the time since the last phase started: each phase resets it).
    peaks = [p["peak_rss_bytes"] for p in phases if p.get("peak_rss_bytes") is not None]
    peak_rss = max(peaks) if peaks else peak_rss
    cuda_peaks = [p["cuda_peak_allocated_bytes"] for p in phases if p.get("cuda_peak_allocated_bytes") is not None]
    facts = payload.get("reference_facts", {})
    notes = []
    if payload.get("save_error"):
        notes.append(f"saving failed: {payload['save_error']}")
    return ExecutionResult(
        status="ok", model_dir=request["model_dir"], model_kind=payload["model_kind"], strategy=request["strategy"],
        strategy_summary=plan.summary(), device=payload["device"], isolated=request["isolated"], phases=phases,
        peak_rss_bytes=peak_rss, cuda_peak_allocated_bytes=max(cuda_peaks) if cuda_peaks else None,
        params=payload["params"], params_baseline=_int(facts.get("params")), weight_bytes=payload["weight_bytes"],
        weight_bytes_baseline=_int(facts.get("weight_bytes")), disk_bytes=payload.get("disk_bytes"),
        weights_file_bytes=payload.get("weights_file_bytes"),
        saved_to=payload.get("saved_to"), quantized_at_load=payload.get("quantized_at_load"),
        load_seconds=by_name.get("load", {}).get("seconds"), compress_seconds=by_name.get("compress", {}).get("seconds"),
        evaluate_seconds=by_name.get("evaluate", {}).get("seconds"), latency=payload.get("latency"),
        quality=payload["quality"] | {"baseline_cached": reference_cached}, steps=payload.get("steps", []),
        environment=payload.get("environment"), notes=notes, job_dir=job_dir)


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None

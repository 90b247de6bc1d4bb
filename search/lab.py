"""``fitplan lab`` / :func:`run_lab`: the seed lab's four steps, end to end, in one call.

1. **analysis** (``analysis.json``): the model's parameter breakdown and hardware requirements (the
   planner functions ``fitplan report`` prints), and the baseline executed for real
   (``executors.execute`` with no strategy: quality 100% by definition, measured memory and latency).
2. **strategy** (``strategy.json``): the sensitivity profile (``executors.run_profile``, cached),
   ``planner.plan`` under the constraints, and a predicted ``run_search`` on this machine's device
   (deployment target ``local`` unless another is given) over the strategies the executors can run
   here (``search.space.executable_space``).
3. **implementation** (``implementation.json``): the closed loop, ``run_search(..., execute_top=K,
   rounds=R)``: each round executes K candidates for real, refines the predictor on the measurements
   and re-scores every trial; predictor quality per round.
4. **validation** (``validation.json``): the recommendation is verified (measured, meets every
   constraint on the measurement) or the record says why not; the report (``report.html``,
   ``report.md``); with ``save_best`` the recommended measured run is exported
   (``executors.export_model``) and reloaded.

Everything lives in ``out_dir``: the four checkpoints, the Optuna study (``lab.db``), the executed runs
(``runs/``, one directory each, never overwritten), the calibration store (``calibration/``), the
profile (``profile.json``), the tables (``tables/``) and the report. A checkpoint is written when its
step is complete; a re-run of the same command reuses complete steps, and the loop's executions are
kept in the study, so no finished execution runs again. A directory holding another lab (another model,
constraints, evaluator, data or settings) is refused.

Without torch (the ``exec`` extra) steps 1 and 2 run on predictions only and the lab stops there with
one message naming ``pip install ".[exec]"``: the report is written, labelled predicted-only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InvalidRequestError
from planner.models.directory import check_model_dir
from search.lab_records import Check, ExportRecord, LabSummary, MeasuredRun, Validation
from search.results import reference_mask

STEPS: tuple[str, ...] = ("analysis", "strategy", "implementation", "validation")
EXEC_HINT = 'pip install ".[exec]"'
EXEC_PACKAGES = ("torch", "transformers", "bitsandbytes")
DEFAULT_OUT = "fitplan-lab"
# Why distilled students are left out unless asked for: executing one trains it (200 steps by default,
# planner.strategy.DistillationSpec), measured at over 10 minutes for a MiniLM student on this 2-core CPU
# under load, the whole lab's budget; every other technique executes in seconds.
NO_DISTILLATION = ("distilled students left out: executing one trains it, which takes longer on a CPU than the "
                   "rest of the lab; --with-distillation includes them")
STUDY = "lab"
SCHEMA = 1


class LabRequest(BaseModel):
    """What identifies a lab: a directory holding a lab with other values is refused (not mixed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: str = Field(description="resolved model directory")
    constraints: dict[str, Any] = Field(description="Constraints, JSON")
    evaluator: str | None = Field(None, description="executor evaluator (None: fidelity for encoders, perplexity "
                                  "for causal LMs)")
    eval_data: str | None = Field(None, description="the user's evaluation data file (resolved)")
    execute_top: int = Field(3, ge=1, le=64, description="candidates executed per round")
    rounds: int = Field(2, ge=1, le=20, description="closed-loop rounds")
    trials: int = Field(100, ge=1, le=100_000, description="predicted trials of the search")
    distillation: bool = Field(False, description="include distilled students (each execution trains one)")
    seed: int = 0


class LabOutcome(BaseModel):
    """What :func:`run_lab` did: each step's status, the files, the verdict."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    out_dir: Path
    steps: dict[str, str]
    checkpoints: dict[str, Path]
    reports: dict[str, Path] = Field(default_factory=dict)
    validation: Validation | None = None
    stopped: str | None = Field(None, description="why the lab stopped before executing candidates")
    seconds: float = 0.0

    @property
    def exported(self) -> ExportRecord | None:
        return None if self.validation is None else self.validation.export


# -- input checks ----------------------------------------------------------------------------------------
def missing_exec_packages() -> list[str]:
    """The exec extra's packages that cannot be imported (found without importing them)."""
    import importlib.util

    missing = []
    for name in EXEC_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def _stopped_message(missing: list[str]) -> str:
    return (f"Stopped after the predicted steps (analysis, strategy): executing the baseline and the candidates "
            f"needs {', '.join(missing)}, not installed. Install the exec extra (from a checkout: {EXEC_HINT}) and "
            f"run the same command again: the lab resumes and runs the baseline, the profile and the closed loop.")


# -- checkpoints ----------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidRequestError(f"checkpoint {path} is unreadable ({error}); move it away to redo that step.") \
            from None


def _check_same_lab(out: Path, request: LabRequest) -> None:
    for step in STEPS:
        found = _read_checkpoint(out / f"{step}.json")
        if found is None:
            continue
        recorded, wanted = _flat_request(found.get("request") or {}), _flat_request(request.model_dump(mode="json"))
        differs = [f"{k} {recorded.get(k)!r} (asked: {wanted.get(k)!r})" for k in sorted(set(recorded) | set(wanted))
                   if recorded.get(k) != wanted.get(k)]
        if differs:
            raise InvalidRequestError(f"--out {str(out)!r} holds a lab with other settings: {'; '.join(differs)}. "
                                      f"Re-run with the same settings to resume it, or choose another --out.")
        return


def _flat_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request with the constraints' fields at the top (a difference names the field)."""
    return {**{k: v for k, v in request.items() if k != "constraints"}, **(request.get("constraints") or {})}


def _frame_records(frame: Any) -> Any:
    """A DataFrame as JSON records (NaN -> None); a string (why a section was not computed) as is."""
    if isinstance(frame, str):
        return frame
    import math

    records = frame.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]


# -- the lab ---------------------------------------------------------------------------------------------
class _Lab:
    def __init__(self, request: LabRequest, out: Path, *, workers: int, save_best: bool, progress: bool,
                 echo: Callable[[str], None], execution_timeout: float | None = None):
        self.request, self.out, self.workers, self.save_best = request, out, workers, save_best
        self.execution_timeout = execution_timeout
        self.progress, self._echo = progress, echo
        self.start = time.monotonic()
        self.steps: dict[str, str] = {}
        self.missing = missing_exec_packages()
        from planner.models.resolve import get_model
        from planner.planning.constraints import Constraints

        self.spec = get_model(Path(request.model_dir))
        self.constraints = Constraints(**request.constraints)
        self.storage = f"sqlite:///{out / 'lab.db'}"
        from executors.evaluate import DEFAULT_EVALUATOR
        from executors.loading import model_kind

        # Quality is predicted on the family of the metric the executors measure (fidelity -> embedding).
        self.metric = request.evaluator or DEFAULT_EVALUATOR[model_kind(request.model_dir)]

    def echo(self, text: str) -> None:
        self._echo(f"lab {time.monotonic() - self.start:6.1f} s  {text}")

    def path(self, step: str) -> Path:
        return self.out / f"{step}.json"

    def done(self, step: str) -> dict[str, Any] | None:
        found = _read_checkpoint(self.path(step))
        return found if found is not None and found.get("complete") else None

    def save(self, step: str, data: dict[str, Any], *, complete: bool) -> dict[str, Any]:
        payload = {"schema": SCHEMA, "step": step, "complete": complete, "finished_at": _now(),
                   "request": self.request.model_dump(mode="json"), **data}
        _write_json(self.path(step), payload)
        return payload

    # step 1 -------------------------------------------------------------------------------------
    def analysis(self) -> dict[str, Any]:
        found = self.done("analysis")
        if found is not None:
            self.steps["analysis"] = "resumed"
            self.echo("[1/4] analysis: reused analysis.json (baseline measured before)")
            return found
        self.echo(f"[1/4] analysis: {self.spec.name}, {self.spec.params.total:,} parameters")
        from search.report import hardware_requirements

        params = self.spec.params.model_dump()
        breakdown = [{"component": k, "parameters": v, "share_pct": 100.0 * v / params["total"]}
                     for k, v in params.items() if k not in ("total", "active") and v]
        hardware = {title: _frame_records(frame)
                    for title, frame in hardware_requirements(self.spec, self.constraints).items()}
        model = {"dir": self.request.model_dir, "name": self.spec.name, "model_type": self.spec.model_type,
                 "layers": self.spec.num_layers, "hidden_size": self.spec.hidden_size,
                 "parameters": params["total"], "breakdown": breakdown}
        if self.missing:
            baseline = MeasuredRun(strategy="baseline", status="not run",
                                   reason=f"{', '.join(self.missing)} not installed ({EXEC_HINT})")
        else:
            baseline = self._baseline()
        complete = baseline.status == "ok"
        self.steps["analysis"] = "done" if complete else f"predicted only: baseline {baseline.status}"
        return self.save("analysis", {"model": model, "hardware": hardware, "baseline": baseline.model_dump()},
                         complete=complete)

    def _baseline(self) -> MeasuredRun:
        """The uncompressed model measured for real; a finished baseline run in ``runs/`` is reused."""
        from executors.result import ExecutionResult

        runs = self.out / "runs"
        for line in _lines(runs / "results.jsonl"):
            record = ExecutionResult.model_validate_json(line)
            if record.status == "ok" and record.strategy_summary == "baseline":
                self.echo(f"[1/4] baseline: reused the finished run {record.run_dir}")
                return MeasuredRun.from_result(record, "baseline")
        self.echo("[1/4] baseline: executing the uncompressed model (quality reference, memory, latency)")
        import executors

        result = executors.execute(self.request.model_dir, None, evaluator=self.request.evaluator,
                                   data=self.request.eval_data, out_dir=runs, seed=self.request.seed,
                                   progress=self.progress)
        measured = MeasuredRun.from_result(result, "baseline")
        if result.status != "ok":
            raise InvalidRequestError(f"the baseline run failed ({result.reason}); see {result.run_dir}. Nothing "
                                      f"else can be measured against it.")
        self.echo(f"[1/4] baseline: {measured.memory_gib:.2f} GiB peak, {measured.latency_ms:.1f} ms per "
                  f"{measured.batch} forward, {measured.evaluator}")
        return measured

    # step 2 -------------------------------------------------------------------------------------
    def strategy(self) -> tuple[dict[str, Any], Any]:
        """The predicted strategy design; returns the checkpoint and the loaded profile (or None)."""
        found = self.done("strategy")
        if found is not None:
            self.steps["strategy"] = "resumed"
            self.echo("[2/4] strategy: reused strategy.json")
            return found, self._load_profile(found.get("profile"))
        profile, profile_record = None, None
        if not self.missing:
            profile, profile_record = self._profile()
        import planner

        self.echo("[2/4] strategy: planning under " + self.constraints.summary())
        plan = planner.plan(self.spec, self.constraints, profile=profile, metric=self.metric)
        plan_record = plan.as_dict()
        plan_record["candidates"] = plan_record["candidates"][:10]
        result = self._search(profile, execute=False)
        best = result.best
        self.echo(f"[2/4] strategy: {result.n_complete} predicted trials, {int(result.table['feasible'].sum())} "
                  f"feasible strategies; predicted best: {best['strategy'] if best else 'none feasible'}")
        complete = not self.missing
        self.steps["strategy"] = "done" if complete else "predicted only: no profile (torch not installed)"
        data = {"constraints": self.constraints.model_dump(mode="json", exclude_none=True),
                "constraints_summary": self.constraints.summary(), "profile": profile_record, "plan": plan_record,
                "space_notes": [] if self.request.distillation else [NO_DISTILLATION],
                "search": {"storage": self.storage, "study": result.study_name, "trials": result.n_trials,
                           "feasible": int(result.table["feasible"].sum()),
                           "best": _row_record(best), "top": _frame_records(result.table.head(10))}}
        return self.save("strategy", data, complete=complete), profile

    def _profile(self) -> tuple[Any, dict[str, Any]]:
        import executors

        self.echo("[2/4] strategy: sensitivity profile (cached per model and settings)")
        started = time.monotonic()
        outcome = executors.run_profile(self.request.model_dir, evaluator=self.request.evaluator,
                                        data=self.request.eval_data, seed=self.request.seed, progress=self.progress)
        seconds = time.monotonic() - started
        copy = self.out / "profile.json"
        if not copy.exists():
            outcome.profile.save(copy)
        record = {"path": str(copy), "cache": str(outcome.path), "cached": outcome.cached, "seconds": seconds,
                  "entries": len(outcome.profile.entries), "notes": outcome.notes}
        self.echo(f"[2/4] strategy: profile {'reused from the cache' if outcome.cached else 'measured'} "
                  f"({len(outcome.profile.entries)} entries, {seconds:.1f} s)")
        return outcome.profile, record

    @staticmethod
    def _load_profile(record: dict[str, Any] | None) -> Any:
        if not record:
            return None
        from planner.accuracy.profile import SensitivityProfile

        return SensitivityProfile.load(record["path"])

    def _search(self, profile: Any, *, execute: bool, baseline: MeasuredRun | None = None) -> Any:
        from search.run import run_search
        from search.space import executable_space

        space = executable_space(self.spec, self.constraints, "cpu" if self.missing else "auto")
        if not self.request.distillation:  # see NO_DISTILLATION
            space = space.model_copy(update={"distill_depths": (1.0,), "distill_widths": (1.0,)})
        # The loop's budget is the study's total; the predicted step samples round 1's share of it, which the
        # loop's first round then finds done (search.loop: round r grows the study to trials * r / rounds).
        # Without the exec extra no loop follows: the predicted search gets the whole budget.
        trials = (self.request.trials if execute or self.missing
                  else -(-self.request.trials // self.request.rounds))
        kwargs: dict[str, Any] = {}
        if execute:
            kwargs = {"model_dir": self.request.model_dir, "execute_top": self.request.execute_top,
                      "rounds": self.request.rounds, "workers": self.workers, "evaluator": self.request.evaluator,
                      "eval_data": self.request.eval_data, "out_dir": str(self.out),
                      "calibration_dir": str(self.out / "calibration"), "device": "auto",
                      "execution_timeout": self.execution_timeout,
                      # step 1's measured baseline is the loop's reference: stored in its study, never re-run
                      "baseline_run": baseline.result_path if baseline is not None and baseline.status == "ok"
                      else None}
        study = STUDY if profile is not None else f"{STUDY}-prior"
        result = run_search(self.request.model_dir, self.constraints, space=space, n_trials=trials,
                            storage=self.storage, study_name=study, seed=self.request.seed, profile=profile,
                            metric=self.metric, progress=self.progress, **kwargs)
        if result.interrupted:  # Ctrl-C: the study keeps every finished trial and execution; no checkpoint
            self._echo(f"lab interrupted: finished trials and executions are saved in {self.out}; run the same "
                       f"command again to resume")
            raise KeyboardInterrupt
        return result

    # step 3 -------------------------------------------------------------------------------------
    def implementation(self, profile: Any, baseline: MeasuredRun | None = None) -> Any:
        """The closed loop; returns its SearchResult (rebuilt from the study when the step is complete)."""
        found = self.done("implementation")
        if found is not None:
            self.steps["implementation"] = "resumed"
            self.echo("[3/4] implementation: reused implementation.json; the table comes from the study")
            return self._stored_result(found["search"]["study"])
        self.echo(f"[3/4] implementation: {self.request.rounds} rounds x {self.request.execute_top} candidates "
                  f"executed for real ({self.workers} worker{'s' if self.workers > 1 else ''})")
        result = self._search(profile, execute=True, baseline=baseline)
        table = result.table
        measured = table[table["measured_status"].notna()] if "measured_status" in table else table.iloc[0:0]
        measured = measured[~reference_mask(measured)]  # the reference is step 1's baseline run, not a candidate
        rounds = [r.model_dump(mode="json") if hasattr(r, "model_dump") else r for r in result.rounds]
        self.steps["implementation"] = "done"
        self.save("implementation", {"search": {"storage": self.storage, "study": result.study_name,
                                                "trials": result.n_trials},
                                     "rounds": rounds, "measured": _frame_records(measured),
                                     "executions": len(measured),
                                     "failed": int(measured["measured_status"].astype(str).str.startswith(
                                         "failed").sum()) if len(measured) else 0},
                  complete=True)
        self.echo(f"[3/4] implementation: {len(measured)} candidate{'' if len(measured) == 1 else 's'} measured "
                  f"over {len(rounds)} round{'' if len(rounds) == 1 else 's'}")
        return result

    def _stored_result(self, study_name: str) -> Any:
        from search.results import result_from_study
        from search.storage import open_storage
        from search.study import load_existing

        return result_from_study(load_existing(open_storage(self.storage), study_name))

    # step 4 -------------------------------------------------------------------------------------
    def validation(self, result: Any, baseline: MeasuredRun,
                   plan: dict[str, Any] | None = None) -> tuple[Validation, bool]:
        """The verdict (and the export with save_best); returns it and whether it changed on disk."""
        found = self.done("validation")
        if found is not None:
            validation = Validation.model_validate(found["validation"])
            if not self.save_best or validation.export is not None:
                self.steps["validation"] = "resumed"
                self.echo("[4/4] validation: reused validation.json")
                return validation, False
            validation = validation.model_copy(update={"export": self._export(result, baseline, validation)})
        else:
            validation = validate(result, self.constraints, baseline, plan)
            self.echo(f"[4/4] validation: {'verified' if validation.verified else 'NOT verified'}: "
                      f"{validation.reason}")
            if self.save_best:
                validation = validation.model_copy(update={"export": self._export(result, baseline, validation)})
        self.steps["validation"] = "done"
        self.save("validation", {"validation": validation.model_dump(mode="json")}, complete=True)
        return validation, True

    def _export(self, result: Any, baseline: MeasuredRun, validation: Validation) -> ExportRecord:
        """Export the recommended measured run; when its format cannot be exported, the best verified
        candidate that can (and the record says why)."""
        from planner.errors import UnsupportedError

        if not validation.verified:
            return ExportRecord(strategy=validation.strategy or "none", status="not exported",
                                reason=f"the recommendation is not verified ({validation.reason})")
        import executors

        skipped: list[str] = []
        rows = _verified_rows(result, self.constraints, baseline)
        # The recommendation first; then the other verified compressed candidates in rank order.
        rows = ([r for r in rows if r["strategy"] == validation.strategy] +
                [r for r in rows if r["strategy"] != validation.strategy and not r.get("reference")])
        for row in rows:
            target = self.out / "best-model"
            self.echo(f"[4/4] export: {row['strategy']} -> {target}")
            try:
                exported = executors.export_model(row["measured_run"], target)
            except UnsupportedError as error:
                skipped.append(f"{row['strategy']}: {error}")
                continue
            reason = None
            if skipped:
                reason = ("the better verified candidates cannot be exported: " + " | ".join(skipped))
            self.echo(f"[4/4] export: reloaded, max |diff| {exported.max_abs_diff:.3g} "
                      f"({'verified' if exported.verified else 'NOT verified'})")
            return ExportRecord(strategy=row["strategy"], status="ok", path=str(exported.out_dir),
                                quantization=exported.quantization, round_trip_max_abs_diff=exported.max_abs_diff,
                                round_trip_verified=exported.verified, reason=reason)
        return ExportRecord(strategy=validation.strategy or "none", status="not exported",
                            reason="no verified candidate can be exported: " + " | ".join(skipped))

    # report -------------------------------------------------------------------------------------
    def report(self, result: Any, baseline: MeasuredRun | None, validation: Validation | None,
               stopped: str | None, profile_record: dict[str, Any] | None) -> dict[str, Path]:
        from search.report import write_report

        profile = None
        if profile_record:
            profile = (f"{profile_record['entries']} measurements, "
                       f"{'reused from the cache' if profile_record['cached'] else 'measured'} "
                       f"({profile_record['seconds']:.1f} s); {profile_record['path']}")
        lab = LabSummary(model_dir=self.request.model_dir, steps=self.steps, baseline=baseline, profile=profile,
                         validation=validation, stopped=stopped,
                         notes=[] if self.request.distillation else [NO_DISTILLATION])
        paths = {"html": write_report(result, self.out, fmt="html", lab=lab),
                 "md": write_report(result, self.out, fmt="md", lab=lab)}
        paths.update({f"table {k}": v for k, v in result.write(self.out / "tables").items() if k in ("csv", "md")})
        return paths


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _row_record(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    import math

    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


# -- validation ----------------------------------------------------------------------------------------
def _value(row: dict[str, Any], key: str) -> float | None:
    from search.report import _number

    return _number(row, key)


def checks(row: dict[str, Any], constraints: Any, baseline: MeasuredRun | None) -> list[Check]:
    """Each active limit of ``constraints`` against the candidate ``row`` (a trade-off table row): its
    prediction and measurement. Memory and speed are measurable only when the target is the device the
    executors ran on (deployment target ``local``); elsewhere the check says so (ok None)."""
    local = constraints.is_local
    elsewhere = f"the target is {constraints.gpu or 'another device'}; this machine's measurement does not apply"
    found = []
    for name, limit in constraints.active_limits().items():
        if name == "max_accuracy_loss":
            predicted = _value(row, "quality_loss_pct")
            retained = _value(row, "measured_quality_retained_pct")
            measured = None if retained is None else 100.0 - retained
            found.append(Check(constraint=name, limit=limit, predicted=predicted, measured=measured,
                               ok=None if measured is None else measured <= limit,
                               note="" if measured is not None else "not measured"))
        elif name == "max_memory_gb":
            measured = _value(row, "measured_memory_gib")
            ok = None if measured is None or not local else measured <= limit
            note = "" if ok is not None else ("not measured" if measured is None else elsewhere)
            found.append(Check(constraint=name, limit=limit, predicted=_value(row, "memory_gib"), measured=measured,
                               ok=ok, note=note))
        elif name == "min_speedup":
            latency = _value(row, "measured_latency_ms")
            base = baseline.latency_ms if baseline is not None else None
            measured = base / latency if latency and base else None
            ok = None if measured is None or not local else measured >= limit
            note = ("speedup = baseline latency / candidate latency, both measured here" if ok is not None else
                    "not measured" if measured is None else elsewhere)
            found.append(Check(constraint=name, limit=limit, predicted=_value(row, "speedup"), measured=measured,
                               ok=ok, note=note))
        else:
            column = {"min_tokens_per_s": "tokens_per_s", "max_cost_per_hour": "usd_per_hour",
                      "max_cost_per_1m_tokens": "usd_per_1m_tokens"}.get(name)
            found.append(Check(constraint=name, limit=limit, predicted=_value(row, column) if column else None,
                               ok=None, note="predicted only: the executors do not measure it"))
    return found


def _measured_ok(row: dict[str, Any]) -> bool:
    return str(row.get("measured_status") or "") == "ok"


def _verified_rows(result: Any, constraints: Any, baseline: MeasuredRun | None) -> list[dict[str, Any]]:
    """Measured-ok rows of the table whose every check holds, in rank order."""
    rows = [r for r in result.table.to_dict(orient="records") if _measured_ok(r)]
    return [r for r in rows if all(c.ok for c in checks(r, constraints, baseline))]


def _unverifiable_plan(plan: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """(summary, why it cannot be executed here, the plan's reason) of the plan's recommendation, or None."""
    if not plan or not plan.get("recommended"):
        return None
    from planner.execution import unexecutable_reason
    from planner.strategy import CompressionStrategy

    recommended = plan["recommended"]
    strategy = CompressionStrategy.model_validate(recommended["strategy"])
    why = unexecutable_reason(strategy) or "the executable search did not reach it"
    return recommended["summary"], why, recommended.get("reason", "predicted")


def _measured_outcomes(result: Any, constraints: Any, baseline: MeasuredRun | None) -> str:
    """'; of the N executed: X: max_accuracy_loss 4.1 > 3; Y: failed: ...' (empty when none was executed)."""
    rows = [r for r in result.table.to_dict(orient="records") if r.get("measured_status") is not None]
    if not rows:
        return "; no candidate was executed"
    parts = []
    for row in rows[:5]:
        if not _measured_ok(row):
            parts.append(f"{row['strategy']}: {row['measured_status']}")
            continue
        missed = [f"{c.constraint} {c.measured:.3g} vs {c.limit:g}" for c in checks(row, constraints, baseline)
                  if c.ok is False]
        parts.append(f"{row['strategy']}: {', '.join(missed) if missed else 'within the measurable limits'}")
    return f"; of the {len(rows)} executed: " + "; ".join(parts)


def validate(result: Any, constraints: Any, baseline: MeasuredRun | None,
             plan: dict[str, Any] | None = None) -> Validation:
    """Step 4's verdict on ``result.best``: verified when it was measured and every check holds on the
    measurement; otherwise the reason (not measured, failed, a limit exceeded, not measurable here).

    ``plan``: step 2's plan record (``planner.plan(...).as_dict()``). Its recommendation is drawn from every
    strategy the deployment target runs, the search's only from those the executors run here: when the
    search has nothing feasible but the plan has, the verdict names it as a prediction that cannot be
    verified on this machine, and why (e.g. AWQ for a vLLM GPU target on a CPU-only machine)."""
    from search.report import deployment_note

    best = result.best  # a compressed candidate whenever one is feasible (search.results)
    note = deployment_note(best, constraints, result.nearest_misses())
    if best is None:
        planned = _unverifiable_plan(plan)
        if planned is not None:
            summary, why, reason = planned
            return Validation(strategy=None, verified=False, predicted_only=summary,
                              deployment_note=f"Predicted only: the plan recommends `{summary}` ({reason}). It cannot "
                                              f"be executed on this machine ({why}); run fitplan there where its "
                                              f"format executes to verify it. {note}",
                              reason=f"no strategy the executors run here meets every constraint; the plan's "
                                     f"`{summary}` does as predicted, but cannot be verified here ({why})")
        return Validation(strategy=None, verified=False, deployment_note=note,
                          reason="no strategy meets every constraint, even as predicted; see the nearest misses")
    found = checks(best, constraints, baseline)
    measured = None
    if best.get("measured_status") is not None:
        measured = MeasuredRun(strategy=best["strategy"], status="ok" if _measured_ok(best) else "failed",
                               reason=None if _measured_ok(best) else str(best["measured_status"]),
                               quality_retained_pct=_value(best, "measured_quality_retained_pct"),
                               memory_gib=_value(best, "measured_memory_gib"),
                               latency_ms=_value(best, "measured_latency_ms"), run_dir=best.get("measured_run"))
    base = {"strategy": best["strategy"], "strategy_json": best.get("strategy_json"), "checks": found,
            "measured": measured, "deployment_note": note}
    if measured is None:
        return Validation(**base, verified=False, reason="the recommended candidate was not executed, so it is a "
                          "prediction only" + _measured_outcomes(result, constraints, baseline))
    if measured.status != "ok":
        return Validation(**base, verified=False, reason=f"its run failed: {measured.reason}")
    failed = [c for c in found if c.ok is False]
    unknown = [c for c in found if c.ok is None]
    if failed:
        text = "; ".join(f"{c.constraint}: measured {c.measured:.3g} vs limit {c.limit:g}" for c in failed)
        return Validation(**base, verified=False, reason=f"the measurement exceeds a limit: {text}")
    if unknown:
        text = "; ".join(f"{c.constraint} ({c.note})" for c in unknown)
        return Validation(**base, verified=False, reason=f"measured, within every measurable limit, but not "
                          f"measurable here: {text}")
    text = "; ".join(f"{c.constraint} {c.measured:.3g} (limit {c.limit:g})" for c in found)
    return Validation(**base, verified=True, reason=f"measured on this machine: {text}")


# -- entry point ---------------------------------------------------------------------------------------
def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_lab(model_dir: str | os.PathLike, constraints: Any, *, out_dir: str | os.PathLike = DEFAULT_OUT,
            execute_top: int = 3, rounds: int = 2, trials: int = 100, workers: int = 1, evaluator: str | None = None,
            eval_data: str | os.PathLike | None = None, seed: int = 0, save_best: bool = False,
            distillation: bool = False, execution_timeout: float | None = None,
            progress: bool = True, echo: Callable[[str], None] | None = None) -> LabOutcome:
    """Run (or resume) the lab on ``model_dir`` under ``constraints`` (a Constraints or a dict; with no
    deployment target and no gpu, the target is ``local``: this machine). See the module docstring.

    ``execute_top`` candidates are executed per round for ``rounds`` rounds, by ``workers`` parallel
    workers; ``trials`` predicted trials of the search. ``evaluator`` / ``eval_data``: the executors'
    quality evaluator and the user's data for it. ``distillation``: also search distilled students
    (see NO_DISTILLATION). ``execution_timeout``: seconds before a candidate's execution is killed and kept
    as failed (None: from the expected cost of a run, ``search.loop.execution_timeout``; not part of the
    lab's identity, so a resume may change it). ``echo``: where progress lines go (default stderr).
    """
    from executors.paths import writable_directory
    from search.candidates import coerce_constraints

    started = time.monotonic()
    model = check_model_dir(model_dir, "MODEL_DIR")
    if isinstance(constraints, dict) and not constraints.get("deployment_target") and not constraints.get("gpu"):
        constraints = {**constraints, "deployment_target": "local"}
    constraints = coerce_constraints(constraints)
    data = None
    if eval_data is not None:
        data = Path(eval_data).expanduser()
        if not data.exists():
            raise InvalidRequestError(f"--eval-data {str(eval_data)!r} does not exist.")
        data = str(data.resolve())
    request = LabRequest(model_dir=str(model), constraints=constraints.model_dump(mode="json", exclude_none=True),
                         evaluator=evaluator, eval_data=data, execute_top=execute_top, rounds=rounds, trials=trials,
                         distillation=distillation, seed=seed)
    if not 1 <= workers <= 64:
        raise InvalidRequestError(f"workers must be between 1 and 64, got {workers}.")
    from search.loop import check_execution_timeout

    check_execution_timeout(execution_timeout)  # before the baseline and the profile spend minutes
    out = writable_directory(out_dir, "--out").resolve()
    _check_same_lab(out, request)
    lab = _Lab(request, out, workers=workers, save_best=save_best, progress=progress, echo=echo or _stderr,
               execution_timeout=execution_timeout)
    analysis = lab.analysis()
    baseline = MeasuredRun.model_validate(analysis["baseline"])
    strategy, profile = lab.strategy()
    checkpoints = {step: lab.path(step) for step in STEPS if lab.path(step).is_file()}
    if lab.missing:
        stopped = _stopped_message(lab.missing)
        result = lab._stored_result(strategy["search"]["study"])
        for step in ("implementation", "validation"):
            lab.steps[step] = f"not run: {', '.join(lab.missing)} not installed"
        reports = lab.report(result, baseline, None, stopped, strategy.get("profile"))
        return LabOutcome(out_dir=out, steps=lab.steps, checkpoints=checkpoints, reports=reports, stopped=stopped,
                          seconds=time.monotonic() - started)
    result = lab.implementation(profile, baseline)
    validation, changed = lab.validation(result, baseline, strategy.get("plan"))
    checkpoints = {step: lab.path(step) for step in STEPS}
    reports = {"html": out / "report.html", "md": out / "report.md"}
    if changed or not all(p.is_file() for p in reports.values()):
        reports = lab.report(result, baseline, validation, None, strategy.get("profile"))
    return LabOutcome(out_dir=out, steps=lab.steps, checkpoints=checkpoints, reports=reports, validation=validation,
                      seconds=time.monotonic() - started)

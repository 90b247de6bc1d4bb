"""``fitplan search`` and ``fitplan results``: run a search, or re-print a stored one.

``fitplan search MODEL [constraint flags of plan] --trials N [--sampler S] [--storage URL] [--study NAME]
[--out DIR]`` writes the ranked table (CSV, JSON, Markdown) and the Pareto plots (PNG, HTML) into DIR and
prints the top of the table. With ``--execute-top K [--rounds R] [--workers W] [--eval NAME]
[--eval-data FILE] [--calibration DIR] [--device D] [--execution-timeout S]`` on a model directory it runs
the closed loop (search.loop): K candidates per round executed for real (runs under DIR/runs), the predictions refined
from them (calibration store DIR/calibration unless --calibration), predicted next to measured columns
and the predictor's quality per round. ``fitplan results --storage URL --study NAME [--out DIR]`` rebuilds the same
from the study alone (a local model directory is recorded with its config, so ``fitplan report`` works
offline; search.study.study_model). The CLI's default storage is ``sqlite:///fitplan.db`` in the working
directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from planner.render import add_format_flags, print_columns, print_json
from search.table_markdown import LOCAL_SWAP, MEASURED, PREDICTED

DEFAULT_OUT = "fitplan-search"
# Columns printed in the terminal, most important first (the same as table.md: search.table_markdown); the
# rest are in the files (--out) and --json. With measurements (closed loop): predicted next to measured;
# 'ok' = feasible, measured ones verified.
SHOWN = tuple((column, header) for column, header, _ in PREDICTED)
SHOWN_MEASURED = tuple((column, header) for column, header, _ in MEASURED)
CELL_FORMATS = {header: fmt for column, header, fmt in (*PREDICTED, *MEASURED, *LOCAL_SWAP.values()) if fmt}
NUMERIC = ("quality_retained_pct", "memory_gib", "speedup", "usd_per_1m_tokens", "latency_ms",
           "measured_quality_retained_pct", "measured_memory_gib")


def add_storage_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    parser.add_argument("--storage", default=None if required else "sqlite:///fitplan.db", required=required,
                        metavar="URL", help="Optuna storage: a SQLite file/URL or postgresql://user@host/db "
                                            "(default sqlite:///fitplan.db)")
    parser.add_argument("--study", metavar="NAME", required=required,
                        help="study name (default: derived from the request, so the same command resumes)")


def register_search(subparsers: argparse._SubParsersAction) -> None:
    from planner.planning.flags import add_constraint_flags

    parser = subparsers.add_parser(
        "search", help="Optuna search over compression strategies under constraints",
        description="Search quantization x sparsity x distillation strategies for MODEL under the constraints "
                    "(predicted quality, memory, speed, cost), store every trial in an Optuna study (resumable, "
                    "shareable by several processes on PostgreSQL) and write the ranked trade-off table and "
                    "Pareto plots.")
    parser.add_argument("model", metavar="MODEL", help="registry name, hub id, directory or config.json")
    add_constraint_flags(parser, objective=False)
    parser.add_argument("--trials", type=int, default=200, metavar="N", help="total trials of the study (default 200)")
    parser.add_argument("--sampler", default="auto", metavar="S", help="auto, nsga2, tpe, gp or random (default auto)")
    parser.add_argument("--objectives", default=None, metavar="LIST",
                        help="comma-separated: quality_loss, memory_gib, cost_per_1m_tokens, tokens_per_s, speedup, "
                        "latency_ms (default quality_loss,memory_gib plus cost_per_1m_tokens on a priced GPU, "
                        "latency_ms on --deployment-target local)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="parallel trials in this process")
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--profile", metavar="FILE", help="sensitivity profile JSON of this model: predictions on "
                        "the profile basis and per-block formats allocated exactly under sampled bit budgets")
    parser.add_argument("--calibration", metavar="DIR", help="calibration store of measured results (with "
                        "--execute-top: also where the loop's measurements are added; default OUT/calibration)")
    loop = parser.add_argument_group("closed loop (needs a model directory and the exec extra)")
    loop.add_argument("--execute-top", type=int, default=0, metavar="K", help="per round, execute K candidates for "
                      "real, refine the predictions from them and re-score (default 0: predictions only)")
    loop.add_argument("--rounds", type=int, default=1, metavar="R", help="rounds of predict-execute-refine "
                      "(default 1; --trials is split over them)")
    loop.add_argument("--workers", type=int, default=1, metavar="W", help="executions at once (default 1)")
    loop.add_argument("--eval", dest="evaluator", metavar="NAME", help="the executors' evaluator: perplexity, "
                      "fidelity or accuracy (default: perplexity for causal LMs, fidelity for encoders)")
    loop.add_argument("--eval-data", metavar="FILE", help="your evaluation data for --eval")
    loop.add_argument("--device", default="auto", help="where candidates run: auto, cpu, cuda or cuda:N (default auto)")
    loop.add_argument("--execution-timeout", type=float, default=None, metavar="SECONDS",
                      help="kill an execution after SECONDS and keep it as failed ('timed out after N s'); "
                           "default: 10x the run's expected time (the study's runs, or the profile's cost), "
                           "at least 300 s; 3600 s before anything is known")
    add_storage_flags(parser)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default ./{DEFAULT_OUT})")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows printed (default 10)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_format_flags(parser)
    # Errors of run_search name its keywords; the CLI prints the flag that set each one.
    parser.set_defaults(func=run_search_command, field_flags={
        "n_trials": "--trials", "n_jobs": "--jobs", "execute_top": "--execute-top", "eval_data": "--eval-data",
        "calibration_dir": "--calibration", "out_dir": "--out", "model_dir": "MODEL"})


def register_results(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("results", help="re-print and re-write a stored search from its study",
                                   description="Rebuild the ranked table and plots of a search from its Optuna "
                                               "study alone.")
    add_storage_flags(parser, required=True)
    parser.add_argument("--out", default=None, metavar="DIR", help="also write the table and plots into DIR")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows printed (default 10)")
    add_format_flags(parser)
    parser.set_defaults(func=run_results_command)


def register_report(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="a self-contained HTML or Markdown report of a stored search",
                                   description="Write the report of a search (model analysis, hardware "
                                               "requirements, constraints, ranked trade-offs, Pareto plot, "
                                               "recommendation) from its Optuna study alone.")
    add_storage_flags(parser, required=True)
    parser.add_argument("--format", dest="report_format", default="html", metavar="F", help="html or md (default html)")
    parser.add_argument("--out", default="fitplan-report", metavar="DIR", help="output directory (default "
                        "./fitplan-report)")
    parser.set_defaults(func=run_report_command)


def run_report_command(args: argparse.Namespace) -> int:
    import sys

    from search.report import write_report
    from search.results import result_from_study
    from search.study import load_existing, study_model

    out = _check_out(args.out)
    study = load_existing(_existing_storage(args.storage), args.study)
    # A local model's name in the request may not resolve offline: the study records its path and config.
    model, note = study_model(study)
    if note:
        print(f"fitplan report: note: {note}", file=sys.stderr)
    path = write_report(result_from_study(study), out, fmt=args.report_format, model=model)
    print(f"wrote {path}")
    return 0


def _check_out(out: str | None) -> Path | None:
    from planner.errors import InvalidRequestError

    if out is None:
        return None
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise InvalidRequestError(f"--out {out!r} is a file; give a directory.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".fitplan-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise InvalidRequestError(f"--out {out!r} is not writable: {error.strerror or error}.") from None
    return path


def run_search_command(args: argparse.Namespace) -> int:
    import sys

    from planner.errors import InvalidRequestError
    from planner.planning.flags import constraints_from_args
    from search.run import run_search

    out = _check_out(args.out)
    if args.top < 1:
        raise InvalidRequestError(f"--top must be at least 1, got {args.top}.")
    constraints = constraints_from_args(args)
    profile = calibration = None
    if args.profile is not None:
        from planner.accuracy.profile import SensitivityProfile

        profile = SensitivityProfile.load(args.profile)
    loop: dict = {}
    if args.execute_top:
        loop = {"execute_top": args.execute_top, "rounds": args.rounds, "workers": args.workers,
                "evaluator": args.evaluator, "eval_data": args.eval_data, "device": args.device,
                "out_dir": str(out) if out is not None else None, "calibration_dir": args.calibration,
                "execution_timeout": args.execution_timeout}
    else:
        given = [flag for flag, used in (("--rounds", args.rounds != 1), ("--workers", args.workers != 1),
                                         ("--eval", args.evaluator is not None),
                                         ("--eval-data", args.eval_data is not None),
                                         ("--device", args.device != "auto"),
                                         ("--execution-timeout", args.execution_timeout is not None)) if used]
        if given:
            raise InvalidRequestError(f"{', '.join(given)} only apply with --execute-top K (the closed loop: K "
                                      f"candidates executed for real per round).")
        if args.calibration is not None:
            from planner.accuracy.calibration import CalibrationStore

            calibration = CalibrationStore.load(args.calibration)
    interactive = not args.no_progress and args.output == "table" and sys.stderr.isatty()
    result = run_search(args.model, constraints, n_trials=args.trials, sampler=args.sampler,
                        objectives=args.objectives, storage=args.storage, study_name=args.study, seed=args.seed,
                        n_jobs=args.jobs, timeout=args.timeout, profile=profile, calibration=calibration,
                        progress=interactive or (bool(loop) and not args.no_progress), **loop)
    paths = result.write(out) if out is not None else {}
    _print(result, args, paths)
    return 130 if result.interrupted else 0


def _existing_storage(storage: str):
    """Open a storage to read a study from: a SQLite file that does not exist is an error (connecting
    would create an empty one)."""
    from planner.errors import InvalidRequestError
    from search.storage import open_storage, storage_url

    url = storage_url(storage)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).expanduser().is_file():
        raise InvalidRequestError(f"--storage {storage!r}: no such SQLite file; give the file or URL the search "
                                  f"wrote (fitplan search --storage).")
    return open_storage(storage)


def run_results_command(args: argparse.Namespace) -> int:
    from search.results import result_from_study
    from search.study import load_existing

    out = _check_out(args.out)
    study = load_existing(_existing_storage(args.storage), args.study)
    result = result_from_study(study)
    paths = result.write(out) if out is not None else {}
    _print(result, args, paths)
    return 0


def _print(result, args: argparse.Namespace, paths: dict) -> None:  # noqa: ANN001 - SearchResult
    import numpy as np

    if args.output == "json":
        import json

        print_json(json.loads(result.to_json()))
        return
    if args.output == "csv":
        print(result.to_csv(), end="")
        return
    top = result.table.head(args.top)
    measured = len(result.table) and result.table["measured_status"].notna().any()
    if measured:  # the measured rows first among the shown ones would hide the ranking: keep rank order,
        top = result.table[(result.table.index < args.top) | result.table["measured_status"].notna()]
    columns = {}
    shown = SHOWN_MEASURED if measured else SHOWN
    local = result.request.get("constraints", {}).get("deployment_target") == "local"
    if local and not measured:  # no price: the timed forward
        shown = tuple(LOCAL_SWAP[column][:2] if column in LOCAL_SWAP else (column, header) for column, header in SHOWN)
    for column, header in shown:
        values = top[column].to_numpy() if column in top else np.array([])
        if column in NUMERIC:
            values = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        elif column == "basis":  # "prior (42)" -> "prior": the count is in the files and --json
            values = np.array([str(v).split(" ")[0] for v in values], dtype=object)
        elif column == "measured_status":  # "failed: <reason>" -> "failed": the reason is in why_not
            values = np.array(["-" if not isinstance(v, str) else v.split(":")[0] for v in values], dtype=object)
        columns[header] = values
    state = "resumed" if result.resumed else "new"
    title = (f"{result.request.get('model')}: {len(result.table)} strategies from {result.n_trials} trials "
             f"({state} study {result.study_name})")
    feasible = int(result.table["feasible"].sum()) if len(result.table) else 0
    caption = f"{feasible} feasible; qual% = predicted quality retained; x = speedup; ok = feasible"
    if measured:
        caption = (f"{feasible} feasible; qual%, GiB predicted; m. = measured; run = real run; "
                   f"ok = feasible (verified if run)")
    elif local:
        caption += "; GiB = peak of the executors' run; ms = their timed forward"
    print_columns(columns, title=title, caption=caption, formats=CELL_FORMATS)
    if result.rounds:
        _print_rounds(result.rounds)
    failed = result.table[result.table["measured_status"].fillna("").str.startswith("failed")] if measured else []
    for row in getattr(failed, "itertuples", lambda: [])():
        print(f"failed for real (excluded): {row.strategy}: {row.measured_status.removeprefix('failed: ')}")
    best = result.best
    if best is None:
        print("no feasible strategy; closest: " + "; ".join(f"{strategy}: {why}"
                                                             for strategy, why in result.nearest_misses()))
    elif result.no_compression_needed:
        figures = (f"{best['measured_quality_retained_pct']:.1f}% quality, {best['measured_memory_gib']:.3f} GiB measured"
                   if best.get("verified") else f"{best['memory_gib']:.2f} GiB predicted")
        print(f"recommended: no compression needed: the uncompressed model meets every constraint ({figures}) and "
              f"no compressed candidate does")
    elif best.get("verified"):
        print(f"recommended (verified): {best['strategy']} ({best['measured_quality_retained_pct']:.1f}% quality "
              f"retained measured, predicted {best['quality_retained_pct']:.1f}%; {best['measured_memory_gib']:.3f} GiB "
              f"measured){'' if result.best_is_verified else '; better-ranked candidates are not measured yet'}")
    else:
        print(f"recommended: {best['strategy']} ({best['quality_retained_pct']:.1f}% quality retained, "
              f"{best['memory_gib']:.2f} GiB){' (predicted; not verified)' if measured else ''}")
    if result.interrupted:
        print("interrupted: every finished trial is saved; run the same command again to resume")
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")


def _print_rounds(rounds) -> None:  # noqa: ANN001 - list[RoundReport]
    """Predictor quality per round: the predictor that chose each round's candidates, scored on what
    was measured from that round on (held out from its fit)."""
    import numpy as np

    def col(name: str) -> "np.ndarray":
        return np.array([np.nan if getattr(r, name) is None else float(getattr(r, name)) for r in rounds], dtype=float)

    columns = {"round": np.array([r.round for r in rounds]), "predictor": np.array([r.predictor for r in rounds],
                                                                                     dtype=object),
               "held": np.array([r.held_out for r in rounds]), "MAE": col("quality_loss_mae"),
               "rho": col("quality_spearman"), "cover": col("quality_coverage"), "mem%": col("memory_error_pct"),
               "lat%": col("latency_error_pct"), "runs": np.array([r.executed for r in rounds])}
    print_columns(columns, title="predictor of each round, on what was measured from then on",
                  caption="MAE: quality loss, points; rho: Spearman; cover: in 80% interval; mem%, lat%: "
                          "median |error|",
                  formats={"MAE": "{:.2f}", "rho": "{:.2f}", "cover": "{:.0%}", "mem%": "{:.1f}", "lat%": "{:.1f}"})

"""``fitplan worker --storage URL --study NAME [--model-dir DIR] [--out DIR] [--eval-data FILE] [--max-jobs N]
[--idle-exit S]``:
run a search's execution jobs on this machine (see :mod:`search.execution`).

Start it on any machine that reaches the study's storage (PostgreSQL for several machines) and has the
model: it pulls the candidates a search with ``--execute-top`` queues, runs each isolated, stores the
measurement in the study and prints one line per job. A worker killed mid-job loses nothing: its job is
re-queued for another worker once its heartbeat is older than the study's grace period.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from search.commands import add_storage_flags
    from planner.render import add_format_flags

    parser = subparsers.add_parser(
        "worker", help="run a search's execution jobs (candidates to measure) on this machine",
        description="Pull the candidates a search queued for real execution (fitplan search --execute-top) from "
                    "its Optuna storage, run each in an isolated process, and store the measurements in the "
                    "study. Several workers, on several machines (PostgreSQL), share the queue; a killed "
                    "worker's job is re-queued.")
    add_storage_flags(parser, required=True)
    parser.add_argument("--model-dir", metavar="DIR", help="the model's directory on this machine (default: the "
                        "path the search recorded)")
    parser.add_argument("--out", metavar="DIR", help="where run directories go on this machine (default: the "
                        "search's output directory)")
    parser.add_argument("--eval-data", metavar="FILE", help="the search's evaluation data file on this machine "
                        "(default: the path the search recorded)")
    parser.add_argument("--max-jobs", type=int, default=None, metavar="N", help="stop after N jobs")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="S",
                        help="stop after S seconds with nothing to run (default: keep waiting for jobs)")
    add_format_flags(parser, csv=False)
    parser.set_defaults(func=run_worker_command, field_flags={"max_jobs": "--max-jobs", "idle_exit_s": "--idle-exit",
                                                              "model_dir": "--model-dir", "out_dir": "--out",
                                                              "eval_data": "--eval-data"})


def run_worker_command(args: argparse.Namespace) -> int:
    from search.commands import _existing_storage
    from search.execution import describe, run_worker

    measurements = []

    def report(measurement) -> None:  # noqa: ANN001 - search.execution.Measurement
        measurements.append(measurement)
        if args.output == "table":
            print(f"{measurement.summary}: {describe(measurement)}", flush=True)

    ran = run_worker(_existing_storage(args.storage), args.study, model_dir=args.model_dir, out_dir=args.out,
                     eval_data=args.eval_data, max_jobs=args.max_jobs, idle_exit_s=args.idle_exit, report=report,
                     progress=args.output == "table")
    if args.output == "json":
        from planner.render import print_json

        print_json([m.model_dump() for m in measurements])
    else:
        failed = sum(m.status != "ok" for m in measurements)
        print(f"ran {ran} job{'s' if ran != 1 else ''} ({ran - failed} ok, {failed} failed)")
    return 0

"""``fitplan lab MODEL_DIR``: the seed lab's four steps in one command (:func:`search.lab.run_lab`).

``fitplan lab MODEL_DIR --max-memory-gb G --max-accuracy-loss P [--min-speedup X] [--deployment-target T]
[--out DIR] [--execute-top K] [--rounds R] [--trials N] [--workers W] [--eval E] [--eval-data FILE]
[--with-distillation] [--save-best] [--execution-timeout SECONDS] [--seed S]``. Progress goes to stderr; the verdict, the files and the exported model to
stdout. Without ``--deployment-target`` and ``--gpu`` the target is this machine (``local``).
"""

from __future__ import annotations

import argparse

from planner.errors import InvalidRequestError

EVAL_CHOICES = ("perplexity", "fidelity", "accuracy")  # the executors' built-in evaluators


def _count(flag: str, low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} must be between {low} and {high}, got {value}")
        return value
    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    from planner.planning.flags import add_constraint_flags
    from search.lab import DEFAULT_OUT

    parser = subparsers.add_parser(
        "lab", help="the seed lab end to end: analyse, profile, search, execute, refine, verify, report",
        description="Run the seed lab's four steps on a local model directory: (1) analysis and the baseline "
                    "measured for real, (2) strategy design: sensitivity profile, plan and a predicted search on "
                    "this machine, (3) implementation: rounds of executing the top candidates, refining the "
                    "predictor and re-scoring, (4) validation of the recommendation, the HTML/Markdown report and "
                    "(--save-best) the exported model. Each step writes a JSON checkpoint into --out; the same "
                    "command resumes. Without torch it stops after the predicted steps.")
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="local Hugging Face model directory (config.json + "
                        "weights)")
    add_constraint_flags(parser, objective=False)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"lab directory: checkpoints, runs, study, "
                        f"report (default ./{DEFAULT_OUT}); the same command resumes it")
    parser.add_argument("--execute-top", type=_count("--execute-top", 1, 64), default=3, metavar="K",
                        help="candidates executed for real per round (default 3)")
    parser.add_argument("--rounds", type=_count("--rounds", 1, 20), default=2, metavar="R",
                        help="closed-loop rounds (default 2)")
    parser.add_argument("--trials", type=_count("--trials", 1, 100_000), default=100, metavar="N",
                        help="predicted trials of the search (default 100)")
    parser.add_argument("--workers", type=_count("--workers", 1, 64), default=1, metavar="W",
                        help="candidates executed in parallel (default 1)")
    parser.add_argument("--eval", dest="evaluator", choices=EVAL_CHOICES,
                        help="quality metric (default: perplexity for causal LMs, fidelity for encoders)")
    parser.add_argument("--eval-data", metavar="FILE", help="your evaluation data for --eval")
    parser.add_argument("--with-distillation", action="store_true", help="also search distilled students (each "
                        "execution trains one: minutes on a CPU; left out by default)")
    parser.add_argument("--save-best", action="store_true", help="export the verified recommendation as a model "
                        "directory from_pretrained reloads (into DIR/best-model)")
    parser.add_argument("--execution-timeout", type=float, default=None, metavar="SECONDS",
                        help="kill a candidate's execution after SECONDS and keep it as failed (default: 10x the "
                             "run's expected time from the baseline run, at least 300 s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search and the runs (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run_lab_command, field_flags={"execute_top": "--execute-top", "eval_data": "--eval-data",
                                                           "out_dir": "--out", "workers": "--workers"})


def run_lab_command(args: argparse.Namespace) -> int:
    from planner.planning.flags import CONSTRAINT_FLAGS, constraints_from_args
    from planner.models.directory import check_model_dir
    from search.lab import run_lab

    check_model_dir(args.model_dir, "MODEL_DIR")  # before anything else: the most common mistake gets its line first
    if args.deployment_target is None and args.gpu is None:
        args.deployment_target = "local"
    constraints = constraints_from_args(args)
    if constraints.max_accuracy_loss is None:
        raise InvalidRequestError(f"{CONSTRAINT_FLAGS['max_accuracy_loss'][0]} is required: the lab verifies the "
                                  f"measured quality against it.")
    outcome = run_lab(args.model_dir, constraints, out_dir=args.out, execute_top=args.execute_top,
                      rounds=args.rounds, trials=args.trials, workers=args.workers, evaluator=args.evaluator,
                      eval_data=args.eval_data, seed=args.seed, save_best=args.save_best,
                      distillation=args.with_distillation, execution_timeout=args.execution_timeout,
                      progress=not args.quiet,
                      echo=(lambda _text: None) if args.quiet else None)
    for step, status in outcome.steps.items():
        print(f"{step}: {status}")
    validation = outcome.validation
    if outcome.stopped:
        print(outcome.stopped)
    elif validation is not None:
        verdict = "verified" if validation.verified else "NOT verified"
        print(f"recommended: {validation.strategy or 'none'} ({verdict}: {validation.reason})")
        print(f"deployment: {validation.deployment_note}")
    for kind, path in outcome.reports.items():
        print(f"wrote {kind}: {path}")
    exported = outcome.exported
    if exported is not None:
        if exported.status == "ok":
            print(f"exported {exported.strategy} to {exported.path} (reload max |diff| "
                  f"{exported.round_trip_max_abs_diff:.3g}, {'verified' if exported.round_trip_verified else 'NOT verified'})"
                  + (f"; {exported.reason}" if exported.reason else ""))
        else:
            print(f"--save-best: nothing exported: {exported.reason}")
    print(f"lab finished in {outcome.seconds:.0f} s; checkpoints in {outcome.out_dir}")
    if args.save_best and (exported is None or exported.status != "ok") and not outcome.stopped:
        return 1
    return 0

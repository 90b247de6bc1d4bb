"""``fitplan run MODEL_DIR [...]``: apply a compression strategy for real and print measured vs predicted.

Builds a :class:`~planner.strategy.CompressionStrategy` from the flags, calls ``executors.execute``
(an isolated process per candidate by default) and prints the measurements next to the planner's
predictions. Each run gets its own directory ``<--out>/<candidate>/<run id>/`` (default ``--out``
``./fitplan-runs``) with its request, job files and result JSON, and a line in
``<--out>/results.jsonl``; ``--save`` also saves the compressed model there. Flags are checked before
any work (limits positive and finite, ``--out`` a writable directory, ``--device`` spelled right);
``--progress`` prints each phase on stderr (default: when stderr is a terminal). Interrupted
(Ctrl-C, SIGTERM): the worker is stopped, the run is recorded as failed, exit code 128 + signal. Needs the ``exec`` extra; executors is imported only when the
command runs, so the rest of the CLI never loads torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.render import add_format_flags, print_frame, print_json, print_mapping
from planner.errors import InvalidRequestError
from planner.strategy import (
    HQQ_FORMATS,
    CompressionStrategy,
    DistillationSpec,
    LowRankSpec,
    QuantizationSpec,
    SPARSITY_PATTERNS,
    SparsitySpec,
)

QUANT_CHOICES = ("nf4", "nf4-dq", "int8", "fp4", "fp4-dq", "bf16", "fp16", "dynamic-int8", *HQQ_FORMATS)
EVAL_CHOICES = ("perplexity", "fidelity", "accuracy")
DEFAULT_OUT = "fitplan-runs"
MIB = 2**20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="apply a compression strategy to a local model for real and measure it",
        description="Apply quantization / pruning / distillation / low-rank to a local Hugging Face model "
                    "directory, measure memory, size, speed and quality, and print them next to the "
                    "planner's predictions. Needs the exec extra (torch, transformers, bitsandbytes).")
    parser.add_argument("model_dir", help="local Hugging Face model directory (config.json + weights)")
    parser.add_argument("--quant", choices=QUANT_CHOICES, metavar="FORMAT",
                        help="weight format of the Linear layers: nf4, nf4-dq, int8, fp4, fp4-dq, bf16, fp16, "
                             "dynamic-int8, hqq-int8/int4/int3/int2 (group 64; add -g32 or -g128)")
    parser.add_argument("--compute-dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="dtype of matmuls and unquantized layers with --quant (default bf16; fp32 for "
                             "dynamic-int8)")
    parser.add_argument("--sparsity", type=float, help="fraction removed (weights, heads, FFN channels or layers)")
    parser.add_argument("--pattern", choices=SPARSITY_PATTERNS, help="sparsity pattern (default unstructured; 2:4 "
                        "and 4:8 imply --sparsity 0.5)")
    parser.add_argument("--distill-depth", type=float, help="student depth / teacher depth (0-1]")
    parser.add_argument("--distill-width", type=float, help="student MLP width / teacher MLP width (0-1]")
    parser.add_argument("--distill-steps", type=int, help="distillation training steps (default 200)")
    parser.add_argument("--low-rank", type=float, help="kept rank ratio of SVD-factorised Linear layers (0-1)")
    parser.add_argument("--eval", dest="evaluator", choices=EVAL_CHOICES,
                        help="quality metric (default: perplexity for causal LMs, fidelity for encoders)")
    parser.add_argument("--eval-data", metavar="PATH",
                        help="your evaluation data: text or JSONL (perplexity), one sentence per line / JSONL / CSV "
                             "(fidelity), CSV/TSV/JSONL with a label column (accuracy), or a saved datasets "
                             "directory (default: the shipped sentences / pydoc text)")
    parser.add_argument("--calib-data", metavar="PATH",
                        help="calibration / distillation text in the same formats (default: CPython's pydoc topics)")
    parser.add_argument("--text-field", help="field/column of --eval-data holding the text (default: text, "
                        "sentence, content, ... or the only text column)")
    parser.add_argument("--label-field", help="field/column of --eval-data holding the label, for --eval accuracy "
                        "(default: label, labels, class, category or target)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"directory for results (default ./{DEFAULT_OUT}); each "
                        "run gets its own sub-directory and a line in results.jsonl")
    parser.add_argument("--save", action="store_true", help="also save the compressed model under --out")
    parser.add_argument("--timeout", type=float, help="seconds before the candidate's process is killed")
    parser.add_argument("--memory-cap-gib", type=float, help="kill the candidate's process above this RSS (GiB)")
    parser.add_argument("--in-process", action="store_true", help="run in this process instead of an isolated "
                        "one (faster; memory peaks then include this process)")
    parser.add_argument("--no-speed", action="store_true", help="skip the latency measurement")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="print each phase on stderr as it starts (default: when stderr is a terminal)")
    add_format_flags(parser, csv=False)
    # Errors of the strategy objects name their fields; the CLI prints the flag that set each one.
    parser.set_defaults(func=run, field_flags={"level": "--sparsity", "pattern": "--pattern",
                                               "depth_ratio": "--distill-depth", "width_ratio": "--distill-width",
                                               "steps": "--distill-steps", "rank_ratio": "--low-rank"})


def strategy_from_args(args: argparse.Namespace) -> CompressionStrategy:
    """The strategy the flags describe (pydantic validates ranges and combinations)."""
    parts = {}
    if args.quant:
        compute = args.compute_dtype or ("fp32" if args.quant == "dynamic-int8" else "bf16")
        parts["quantization"] = QuantizationSpec(weights=args.quant, compute_dtype=compute)
    elif args.compute_dtype:
        raise InvalidRequestError("--compute-dtype applies to --quant; add --quant or drop --compute-dtype.")
    if args.sparsity is not None or args.pattern:
        pattern = args.pattern or "unstructured"
        level = args.sparsity
        if level is None:
            if pattern not in ("2:4", "4:8"):
                raise InvalidRequestError(f"--pattern {pattern} needs --sparsity (the fraction to remove).")
            level = 0.5
        parts["sparsity"] = SparsitySpec(level=level, pattern=pattern)
    if args.distill_depth is not None or args.distill_width is not None:
        extra = {"steps": args.distill_steps} if args.distill_steps is not None else {}
        parts["distillation"] = DistillationSpec(depth_ratio=args.distill_depth, width_ratio=args.distill_width,
                                                 **extra)
    elif args.distill_steps is not None:
        raise InvalidRequestError("--distill-steps needs --distill-depth and/or --distill-width.")
    if args.low_rank is not None:
        parts["low_rank"] = LowRankSpec(rank_ratio=args.low_rank)
    return CompressionStrategy(**parts)


def limits_from_args(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """(timeout seconds, memory cap bytes) from --timeout / --memory-cap-gib, checked with the flag names."""
    from executors.isolation import positive_finite

    positive_finite(args.timeout, "--timeout", "seconds", "omit it for no timeout")
    positive_finite(args.memory_cap_gib, "--memory-cap-gib", "GiB", "omit it for no cap")
    if args.in_process and (args.timeout is not None or args.memory_cap_gib is not None):
        flags = " and ".join(f for f, v in (("--timeout", args.timeout), ("--memory-cap-gib", args.memory_cap_gib))
                             if v is not None)
        raise InvalidRequestError(f"{flags} bound{'s' if ' and ' not in flags else ''} the isolated process, which "
                                  f"--in-process does not start; drop one or the other.")
    cap = int(args.memory_cap_gib * 2**30) if args.memory_cap_gib is not None else None
    return args.timeout, cap


def run(args: argparse.Namespace) -> int:
    from planner.models.directory import check_model_dir

    strategy = strategy_from_args(args)  # the flags' own mistakes first: they need no model
    timeout, cap = limits_from_args(args)
    from executors import execute
    from executors.isolation import Interrupted
    from executors.loading import check_device
    from executors.paths import writable_directory

    try:
        check_device(args.device)
    except InvalidRequestError as error:
        raise InvalidRequestError(f"--device: {error}") from None
    out = writable_directory(args.out, "--out")  # before any work: results are never lost for want of a place
    model_dir = check_model_dir(args.model_dir, "MODEL_DIR")
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        result = execute(model_dir, strategy, evaluator=_evaluator(args), device=args.device, out_dir=out,
                         timeout_s=timeout, isolate=not args.in_process, memory_cap_bytes=cap, save=args.save,
                         speed=not args.no_speed, progress=progress, data=args.eval_data, corpus=args.calib_data)
    except Interrupted as stop:
        print(f"fitplan: interrupted by {stop.signal_name}; the worker was stopped and the run recorded as failed "
              f"in {out / 'results.jsonl'}", file=sys.stderr)
        return 128 + stop.signum
    if args.output == "json":
        print_json(result.model_dump(mode="json"))
    else:
        print_result(result)
    return 0 if result.ok else 1


def _evaluator(args: argparse.Namespace):  # noqa: ANN202 - an evaluator name or object of executors.evaluate
    """--eval, with --text-field / --label-field when given (they need --eval-data)."""
    if args.eval_data is None:
        for flag, value in (("--text-field", args.text_field), ("--label-field", args.label_field)):
            if value is not None:
                raise InvalidRequestError(f"{flag} names a column of --eval-data; add --eval-data PATH or drop {flag}.")
        return args.evaluator
    if args.text_field is None and args.label_field is None:
        return args.evaluator
    from executors.evaluate import EVALUATORS, get_evaluator
    from executors.loading import model_kind

    chosen = get_evaluator(args.evaluator, model_kind(Path(args.model_dir).expanduser()))
    fields = {"text_field": args.text_field}
    if args.label_field is not None:
        if not isinstance(chosen, EVALUATORS["accuracy"]):
            raise InvalidRequestError(f"--label-field is for --eval accuracy; the {chosen.name} evaluator has no labels.")
        fields["label_field"] = args.label_field
    import dataclasses

    return dataclasses.replace(chosen, **fields)


def _number(value: float | None, unit: str) -> str | None:
    if value is None:
        return None
    if unit == "count":
        return f"{value:,.0f}"
    if unit in ("MiB", "ms", "tokens/s", "%"):
        return f"{value:,.1f}"
    return f"{value:.4g}"


def print_result(result) -> None:  # noqa: ANN001 - ExecutionResult lives in executors
    import pandas as pd

    head = [("status", result.status), ("strategy", result.strategy_summary), ("model", result.model_dir),
            ("device", result.device), ("run", result.run_id or "-")]
    if result.reason:
        head.append(("reason", result.reason))
    if result.quality:
        q = result.quality
        head.append(("quality", f"{q.metric}: {q.compressed:.4g} vs baseline {q.baseline:.4g} "
                                f"({q.retained_pct:.1f}% retained)"))
    head.append(("result", result.result_path or "-"))
    print_mapping("fitplan run", head, "table")
    if result.comparisons:
        rows = [{"quantity": c.quantity, "unit": c.unit, "measured": _number(c.measured, c.unit),
                 "predicted": _number(c.predicted, c.unit), "error %": c.error_pct} for c in result.comparisons]
        print_frame(pd.DataFrame(rows), "table", title="measured vs predicted", formats={"error %": "{:+.1f}"})
    if result.phases:
        rows = [{"phase": p.name, "seconds": p.seconds,
                 "peak RSS MiB": p.peak_rss_bytes / MIB if p.peak_rss_bytes is not None else None,
                 "RSS after MiB": p.rss_end_bytes / MIB if p.rss_end_bytes is not None else None}
                for p in result.phases]
        print_frame(pd.DataFrame(rows), "table", title="phases")
    for step in result.steps:
        skipped = step.get("skipped") or []
        line = f"step {step.get('step')}: {step.get('summary')}"
        if skipped:
            line += f" ({len(skipped)} module(s) skipped: " + "; ".join(
                f"{s['name']}: {s['reason']}" for s in skipped[:3]) + (" ..." if len(skipped) > 3 else "") + ")"
        print(line)
    for note in result.notes + (result.prediction.notes if result.prediction else []):
        print(f"note: {note}")

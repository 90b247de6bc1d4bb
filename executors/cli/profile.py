"""``fitplan profile MODEL_DIR``: measure the model's per-block sensitivity profile (``executors.profile``).

Prints the retained quality of each option on each block's attention / MLP group, the effect of
dropping each block, the cost of measuring it and where the JSON is (the cache, and ``--out``).
The planner reads the file: ``planner.accuracy.predict_quality(spec, strategy, profile=...)``.
"""

from __future__ import annotations

import argparse
import sys

from planner.render import add_format_flags, print_frame, print_json, print_mapping

EVAL_CHOICES = ("perplexity", "fidelity", "accuracy")


def register(subparsers: argparse._SubParsersAction) -> None:
    from executors.profiling import DEFAULT_FORMATS, DEFAULT_SPARSITY  # torch-free at import

    sparsity = ",".join(f"{level:g}" if pattern == "unstructured" else pattern for pattern, level in DEFAULT_SPARSITY)

    parser = subparsers.add_parser(
        "profile", help="measure a local model's per-block sensitivity to each format and sparsity level",
        description="For each transformer block and module group (attention, mlp), apply each weight format "
                    "and sparsity level to that group alone and measure the quality retained; also drop each "
                    "block. Writes the sensitivity profile the planner reads (cached by model and settings). "
                    "Needs the exec extra.")
    parser.add_argument("model_dir", help="local Hugging Face model directory (config.json + weights)")
    parser.add_argument("--eval", dest="evaluator", choices=EVAL_CHOICES,
                        help="quality metric (default: perplexity for causal LMs, fidelity for encoders)")
    parser.add_argument("--eval-data", metavar="PATH", help="your evaluation data for --eval (text / JSONL for "
                        "perplexity, sentences for fidelity, CSV/JSONL with labels for accuracy)")
    parser.add_argument("--out", metavar="FILE", help="also write the profile JSON to FILE (never overwritten)")
    parser.add_argument("--formats", metavar="LIST", help=f"comma-separated weight formats (default: "
                        f"{','.join(DEFAULT_FORMATS)}; hqq only when installed); 'all' = every format the "
                        f"executors run; 'none' = no formats")
    parser.add_argument("--sparsity", metavar="LIST", help="comma-separated unstructured levels and N:M patterns "
                        f"(default: {sparsity}); 'none' = no sparsity")
    parser.add_argument("--sparsity-method", choices=("wanda", "magnitude"), default="wanda",
                        help="weight scores for sparsity (default wanda, as fitplan search)")
    parser.add_argument("--no-block-drop", action="store_true", help="skip the block-drop measurements")
    parser.add_argument("--samples", type=int, help="calibration size: perplexity windows or fidelity "
                        "sentences (default: the evaluator's own set, what a run is scored on)")
    parser.add_argument("--seq-len", type=int, help="tokens per perplexity window / per sentence (default: "
                        "the evaluator's, 128 / 64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--no-cache", action="store_true", help="measure again even when a cached profile exists")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads while profiling (default: torch's "
                        "count lowered to the cores other processes leave idle, at least 1)")
    parser.add_argument("--no-replay", action="store_true", help="evaluate the whole model for every entry instead "
                        "of starting at the changed block from the intact model's recorded outputs (slower; the "
                        "same scores)")
    add_format_flags(parser, csv=False)
    parser.set_defaults(func=run)


def _list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [part.strip() for part in text.split(",") if part.strip()]
    return [] if items == ["none"] else items


def run(args: argparse.Namespace) -> int:
    from planner.models.directory import check_model_dir

    model_dir = check_model_dir(args.model_dir, "MODEL_DIR")
    from executors.profiling import parse_sparsity, run_profile

    sparsity = _list(args.sparsity)
    outcome = run_profile(model_dir, evaluator=args.evaluator, data=args.eval_data, formats=_list(args.formats),
                          sparsity=parse_sparsity(",".join(sparsity)) if sparsity is not None else None,
                          sparsity_method=args.sparsity_method, block_drop=not args.no_block_drop,
                          samples=args.samples, seq_len=args.seq_len, device=args.device, cache=not args.no_cache,
                          threads=args.threads, replay=not args.no_replay,
                          out=args.out, progress=args.output != "json" and sys.stderr.isatty())
    profile = outcome.profile
    if args.output == "json":
        print_json({"cached": outcome.cached, "path": str(outcome.path),
                    "out": str(outcome.out) if outcome.out else None, "notes": outcome.notes,
                    "profile": profile.model_dump(mode="json", exclude_none=True)})
        return 0
    print_profile(outcome)
    return 0


def print_profile(outcome) -> None:  # noqa: ANN001 - ProfileOutcome lives in executors
    import pandas as pd

    from planner.render import console, table_width

    profile = outcome.profile
    ev = profile.evaluator
    head = [("model", f"{profile.model.name} ({profile.model.family}, {profile.model.num_blocks} blocks)"),
            ("evaluator", f"{ev.name}: {ev.metric}, baseline {ev.baseline:.4g}"),
            ("calibration", f"{profile.settings.samples} samples x {profile.settings.seq_len} tokens, sparsity "
                            f"{profile.settings.sparsity_method}, {profile.settings.device}"),
            ("cost", (f"cached: reused, nothing measured now; measured {profile.created} in " if outcome.cached
                      else "") + cost_line(profile))]
    head.append(("profile", str(outcome.path)))
    if outcome.out:
        head.append(("written to", str(outcome.out)))
    print_mapping("fitplan profile", head, "table")
    options = list(dict.fromkeys(e.option for e in profile.entries))
    if options:
        rows: dict[tuple[int, str], dict] = {}
        for e in profile.entries:
            group = "attn" if e.group == "attention" else e.group
            rows.setdefault((e.block, e.group), {"block": e.block, "group": group})[_short(e.option)] = e.retained_pct
        frame = pd.DataFrame(list(rows.values()))
        chunks = _chunks(frame, [_short(o) for o in options], console().width, table_width)
        for i, columns in enumerate(chunks):
            part = f", {i + 1} of {len(chunks)}" if len(chunks) > 1 else ""
            print_frame(frame[["block", "group", *columns]], "table",
                        title=f"quality retained % (one group changed{part})",
                        formats={c: "{:.2f}" for c in columns})
    if profile.block_drop:
        column = "retained %, one-shot"
        frame = pd.DataFrame([{"block": d.block, column: d.retained_pct} for d in profile.block_drop])
        print_frame(frame, "table", title="block dropped (no retraining)", formats={column: "{:.2f}"})
    for note in outcome.notes:
        print(f"note: {note}")


def cost_line(profile) -> str:  # noqa: ANN001 - SensitivityProfile
    """What measuring the profile cost, in one line: wall time, evaluations and where the time went."""
    evaluations = profile.n_measurements
    text = f"{profile.total_seconds or 0:.1f} s ({evaluations} measurements"
    cost = profile.cost
    if cost is None:  # a profile written before the cost record existed
        measured = sum(e.seconds for e in profile.entries) + sum(d.seconds for d in profile.block_drop)
        return text + f", {measured:.1f} s evaluating)"
    text += (f": evaluating {cost.evaluate_seconds:.1f} s, quantizing/masking {cost.apply_seconds:.1f} s, "
             f"load {cost.load_seconds:.1f} s")
    if cost.block_passes_replayed:
        text += f"; {cost.block_passes_replayed / cost.block_passes:.0%} of block passes replayed"
    return text + (f"; {cost.threads} thread{'s' if cost.threads > 1 else ''})" if cost.threads else ")")


def _chunks(frame, columns: list[str], width: int, table_width) -> list[list[str]]:  # noqa: ANN001
    """``columns`` split into consecutive runs of about equal size, each printed with block and group within
    ``width`` characters."""
    def natural(column: str) -> int:
        cells = frame[column].map(lambda v: "-" if v != v else f"{v:.2f}") if column in columns else frame[column].astype(str)
        return max(len(column), int(cells.str.len().max()))

    fixed = [natural("block"), natural("group")]
    widths = [natural(c) for c in columns]
    for count in range(1, len(columns) + 1):
        size = -(-len(columns) // count)
        runs = [columns[i:i + size] for i in range(0, len(columns), size)]
        spans = [widths[i:i + size] for i in range(0, len(columns), size)]
        if all(table_width(fixed + span) <= width for span in spans):
            return runs
    return [[c] for c in columns]


def _short(option: str) -> str:
    """Column names that keep the table narrow: 'sparsity:unstructured:0.5' -> 'u0.5', 'hqq-int4' -> 'hqq4',
    'dynamic-int8' -> 'dyn8'."""
    if option.startswith("sparsity:"):
        pattern, _, level = option[len("sparsity:"):].rpartition(":")
        return f"u{level}" if pattern == "unstructured" else pattern
    if option == "dynamic-int8":
        return "dyn8"
    return f"hqq{option.removeprefix('hqq-int').replace('-', '')}" if option.startswith("hqq-int") else option

"""``fitplan fixtures build``: train the small causal LM used by tests and benchmarks (needs exec)."""

from __future__ import annotations

import argparse

from planner.render import add_format_flags, print_mapping


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fixtures", help="build the test/benchmark models (tiny causal LM)")
    actions = parser.add_subparsers(dest="fixtures_command", metavar="ACTION")
    actions.required = True
    build = actions.add_parser(
        "build", help="train tiny-llama-v1 on the pydoc corpus and save it in the cache",
        description="Train the tiny Llama-style causal LM deterministically on the train split of CPython's "
                    "pydoc topics and save it (save_pretrained) in the user cache (or --out).")
    build.add_argument("--out", help="output directory (default: <cache>/fixtures/tiny-llama-v1; cache = "
                       "$FITPLAN_CACHE or ~/.cache/fitplan)")
    build.add_argument("--steps", type=int, default=None, help="training steps (default 600)")
    build.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    add_format_flags(build, csv=False)
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from executors.fixtures import DEFAULT_STEPS, describe, ensure_tiny_llm

    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    if steps < 1:
        from planner.errors import InvalidRequestError

        raise InvalidRequestError(f"--steps must be at least 1, got {steps}.")
    if args.out:
        from planner.validate import output_directory

        output_directory(args.out, "--out")
    info = ensure_tiny_llm(steps, out_dir=args.out, force=args.force, progress=args.output != "json")
    fields = describe(info)
    print_mapping("tiny-llama fixture", list(fields.items()), args.output, payload=fields)
    return 0

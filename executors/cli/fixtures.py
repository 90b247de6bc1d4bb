"""``fitplan fixtures build``: train the small causal LM used by tests and benchmarks (needs exec).

Progress (phases, training steps, ETA) goes to stderr in every output mode, so ``--json`` keeps stdout
for the JSON result.
"""

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
                    "pydoc topics and save it (save_pretrained) in the user cache (or --out). The default "
                    "is the benchmark model (600 steps, a minute or more); --test builds the test suite's "
                    "cheap one (40 short steps, seconds). Progress with an ETA goes to stderr.")
    build.add_argument("--test", action="store_true", help="build the test suite's fixture (tiny-llama-v1-test)")
    build.add_argument("--out", help="output directory (default: <cache>/fixtures/<name>; cache = "
                       "$FITPLAN_CACHE or ~/.cache/fitplan)")
    build.add_argument("--steps", type=int, default=None, help="training steps of the benchmark recipe (default 600)")
    build.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    add_format_flags(build, csv=False)
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from planner.errors import InvalidRequestError

    if args.steps is not None and args.steps < 1:
        raise InvalidRequestError(f"--steps must be at least 1, got {args.steps}.")
    if args.test and args.steps is not None:
        raise InvalidRequestError("--steps sets the benchmark recipe; --test has its own (drop one of them).")
    from executors.fixtures import TEST_RECIPE, describe, ensure_tiny_llm

    if args.out:
        from planner.validate import output_directory

        output_directory(args.out, "--out")
    recipe = TEST_RECIPE if args.test else None
    info = ensure_tiny_llm(args.steps, recipe=recipe, out_dir=args.out, force=args.force, progress=True)
    fields = describe(info)
    print_mapping("tiny-llama fixture", list(fields.items()), args.output, payload=fields)
    return 0

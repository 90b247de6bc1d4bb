"""``fitplan export RESULT_DIR``: write a run's compressed model as a directory ``from_pretrained`` reloads.

Rebuilds the model from the run's ``result.json``, saves safetensors + config (with its quantization
config) + tokenizer + a model card (README.md), reloads it and checks the outputs match
(``executors.export``). Exit code 1 when the reloaded model does not reproduce the outputs.
"""

from __future__ import annotations

import argparse

from planner.render import add_format_flags, print_mapping


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a run's compressed model as a reloadable Hugging Face directory with a model card",
        description="Rebuild the compressed model of a fitplan run (a candidate directory written by fitplan run "
                    "--out, or its result.json), save it so that AutoModel*.from_pretrained loads it again "
                    "(safetensors, config with quantization_config, tokenizer, README.md model card), and check "
                    "the reload gives the same outputs. Needs the exec extra.")
    parser.add_argument("result_dir", help="candidate directory of a fitplan run (holds result.json)")
    parser.add_argument("--out", help="export directory (default: RESULT_DIR/export; must not exist or be empty)")
    add_format_flags(parser, csv=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from executors.export import export_model

    outcome = export_model(args.result_dir, args.out)
    fields = {"exported to": str(outcome.out_dir), "quantization": outcome.quantization or "none (dense)",
              "reload": f"{outcome.reload_class}.from_pretrained",
              "round trip": f"max |diff| {outcome.max_abs_diff:.3g} (outputs up to {outcome.output_scale:.3g}): "
                            + ("same outputs" if outcome.verified else "OUTPUTS DIFFER"),
              "model card": str(outcome.out_dir / "README.md")}
    payload = {"out_dir": str(outcome.out_dir), "quantization": outcome.quantization,
               "max_abs_diff": outcome.max_abs_diff, "output_scale": outcome.output_scale,
               "verified": outcome.verified, "reload_class": outcome.reload_class}
    print_mapping("fitplan export", list(fields.items()), args.output, payload=payload)
    return 0 if outcome.verified else 1

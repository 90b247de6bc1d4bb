"""``fitplan models list`` and ``fitplan models show NAME_OR_PATH``."""

from __future__ import annotations

import argparse

from planner.render import add_format_flags, print_frame, print_json, print_mapping


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="the built-in model registry",
                                   description="List registry models or show one model's architecture and "
                                               "exact parameter breakdown.")
    commands = parser.add_subparsers(dest="models_command", metavar="{list,show}")
    commands.required = True

    listing = commands.add_parser("list", help="list registry models")
    listing.add_argument("--family", help="only models of this family/model_type (e.g. llama, qwen3_moe)")
    add_format_flags(listing)
    listing.set_defaults(func=run_list, quick=True)  # see planner.cli.console_main

    show = commands.add_parser("show", help="architecture facts and parameter breakdown of one model")
    show.add_argument("model", metavar="NAME_OR_PATH",
                      help="registry name or alias, a directory with config.json, or a config.json path")
    add_format_flags(show, csv=False)
    show.set_defaults(func=run_show, quick=True)


def _registry_frame(family: str | None):
    import pandas as pd

    from planner.models import registry_entries
    from planner.models.resolve import registry_spec

    rows = []
    for entry in registry_entries():
        spec = registry_spec(entry.name)
        if family and family.lower() not in (entry.family, spec.model_type):
            continue
        rows.append({
            "name": spec.name, "family": entry.family, "model_type": spec.model_type,
            "params_b": spec.params.total / 1e9,
            "active_b": spec.params.active / 1e9 if spec.is_moe else None,
            "layers": spec.total_layers, "hidden": spec.hidden_size, "attention": spec.attention.kind,
            "heads": spec.num_heads, "kv_heads": spec.num_kv_heads, "vocab": spec.vocab_size,
            "max_context": spec.max_position_embeddings,
        })
    return pd.DataFrame(rows)


def run_list(args: argparse.Namespace) -> int:
    frame = _registry_frame(args.family)
    if frame.empty:
        from hardware_db.names import did_you_mean
        from planner.errors import UnknownModelError
        from planner.models import registry_entries

        families = sorted({e.family for e in registry_entries()})
        raise UnknownModelError(f"no registry model of family {args.family!r}.{did_you_mean(args.family, families)} "
                                f"Families: {', '.join(families)}.")
    print_frame(frame, args.output, title=f"{len(frame)} registry models",
                formats={"params_b": "{:.2f}", "active_b": "{:.2f}", "max_context": "{:,.0f}"})
    return 0


def _checkpoint_format(spec) -> str | None:
    from planner.models.checkpoint import checkpoint_format, format_origin

    fmt = checkpoint_format(spec)
    if fmt is None:
        method = (spec.quantization_config or {}).get("quant_method")
        return f"{method} (not modelled; estimated in bf16 unless --precision)" if method else None
    return f"{fmt} (from {format_origin(spec)}; the default precision)"


def run_show(args: argparse.Namespace) -> int:
    from planner.models import get_model
    from planner.models.registry import find_entry

    spec = get_model(args.model)
    if args.output == "json":
        payload = spec.model_dump(mode="json", exclude={"config", "param_groups"})
        payload["params_total"] = spec.params.total
        payload["param_groups"] = [
            {"name": g.name, "component": g.component, "kind": g.kind, "role": g.role,
             "in_features": g.in_features, "out_features": g.out_features, "bias": g.bias,
             "params_each": g.params_each, "count": g.count, "params": g.params}
            for g in spec.param_groups
        ]
        print_json(payload)
        return 0
    a = spec.attention
    facts = [
        ("name", spec.name), ("source", spec.source), ("model_type", spec.model_type),
        ("architecture", spec.architecture),
        ("layers", spec.num_layers if not spec.num_encoder_layers
         else f"{spec.num_encoder_layers} encoder + {spec.num_layers} decoder"),
        ("hidden size", spec.hidden_size),
        ("attention", f"{a.kind.upper()}: {a.num_heads} query / {a.num_kv_heads} KV heads x {a.head_dim}"),
        ("sliding window", f"{a.sliding_window} tokens on {a.num_sliding_layers} of {len(a.layer_types)} layers"
         if a.sliding_window else None),
        ("MLA latent", f"kv_lora_rank {a.mla.kv_lora_rank} + rope {a.mla.qk_rope_head_dim}" if a.mla else None),
        ("MLP", f"{'gated' if spec.mlp.gated else 'plain'} {spec.mlp.activation}, width {spec.mlp.intermediate_size}"),
        ("MoE", f"{spec.moe.num_experts} experts, top-{spec.moe.experts_per_token}, width "
         f"{spec.moe.expert_intermediate_size}, {spec.moe.num_shared_experts} shared, "
         f"{len(spec.moe.moe_layers)} MoE layers" if spec.moe else None),
        ("vocab", spec.vocab_size), ("max context", spec.max_position_embeddings),
        ("tied embeddings", spec.tie_word_embeddings), ("checkpoint dtype", spec.torch_dtype),
        ("checkpoint format", _checkpoint_format(spec)),
    ]
    entry = find_entry(spec.name) if spec.source == "registry" else None
    if entry is not None:
        exact = (f"{entry.params_total_exact:,} (transformers' meta-device count)" if entry.params_total_exact
                 else "not checked: transformers cannot build it offline (trust_remote_code)")
        facts += [("config fidelity", entry.config_fidelity or "not recorded (see source)"), ("verified", entry.verified), ("exact count", exact)]
    facts += [("note", note) for note in spec.assumptions]
    facts = [(k, v) for k, v in facts if v is not None]
    p = spec.params
    facts += [(f"params: {name}", value) for name, value in p.as_dict().items()
              if value and name not in ("total", "active")]
    facts += [("params: total", p.total)]
    if spec.is_moe:
        facts.append(("params: active per token", p.active))
    print_mapping(spec.name, facts, args.output)
    return 0

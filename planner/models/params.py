"""Exact parameter accounting from architecture facts, without instantiating the model.

:func:`parameter_groups` lists every parameter tensor a Hugging Face model of this architecture owns,
grouped into identical modules (``layers.*.self_attn.q_proj`` x 32). Formulas (all exact):

- Linear ``in -> out``: ``in * out`` weights (+ ``out`` bias).
- Embedding ``rows x width``: ``rows * width``.
- RMSNorm of width ``w``: ``w``; LayerNorm: ``w`` (+ ``w`` bias).
- Gated MLP: gate and up ``h -> F`` plus down ``F -> h``; plain MLP: up and down only.
- MoE layer: router ``h -> E`` plus ``E`` expert MLPs of width ``F_e`` plus shared experts.
- MLA (DeepSeek-V2 section 2.1): ``q_a h -> r_q``, ``q_b r_q -> H (d_nope + d_rope)``,
  ``kv_a h -> r_kv + d_rope``, ``kv_b r_kv -> H (d_nope + d_v)``, ``o H d_v -> h`` plus the two latent norms.

Module names follow each family's real module names (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``) because LoRA
target lists match on them and a fused module gets one adapter, not three. The totals equal
``sum(p.numel() for p in model.parameters())`` of transformers' meta-device model for every registry
model (``tests/test_model_params_exact.py``).
"""

from __future__ import annotations

from typing import Any

from planner.models.spec import COMPONENTS, EmbeddingSpec, MoESpec, NormSpec, ParamGroup, ParameterBreakdown

# Per-family module paths inside a layer, by role. Families not listed use _DEFAULT_NAMES.
_DEFAULT_NAMES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}
_MODULE_NAMES: dict[str, dict[str, str]] = {
    "phi3": {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
             "down": "mlp.down_proj"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "gpt_bigcode": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "qwen": {"qkv": "attn.c_attn", "o": "attn.c_proj", "gate": "mlp.w2", "up": "mlp.w1", "down": "mlp.c_proj"},
    "phi": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.dense",
            "up": "mlp.fc1", "down": "mlp.fc2"},
    "gpt_neox": {"qkv": "attention.query_key_value", "o": "attention.dense", "up": "mlp.dense_h_to_4h",
                 "down": "mlp.dense_4h_to_h"},
    "falcon": {"qkv": "self_attention.query_key_value", "o": "self_attention.dense",
               "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"},
    "opt": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
            "up": "fc1", "down": "fc2"},
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"},
    "t5": {"q": "SelfAttention.q", "k": "SelfAttention.k", "v": "SelfAttention.v", "o": "SelfAttention.o",
           "gate": "DenseReluDense.wi_0", "up": "DenseReluDense.wi_1", "down": "DenseReluDense.wo",
           "up_ungated": "DenseReluDense.wi",
           "cross_q": "EncDecAttention.q", "cross_k": "EncDecAttention.k", "cross_v": "EncDecAttention.v",
           "cross_o": "EncDecAttention.o"},
    "bart": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj",
             "up": "fc1", "down": "fc2", "cross_q": "encoder_attn.q_proj", "cross_k": "encoder_attn.k_proj",
             "cross_v": "encoder_attn.v_proj", "cross_o": "encoder_attn.out_proj"},
}
_MODULE_NAMES["mt5"] = _MODULE_NAMES["t5"]  # transformers' MT5 blocks are T5 blocks
_FUSED_QKV = {"phi3", "gpt2", "gpt_bigcode", "qwen", "falcon", "gpt_neox"}
_FUSED_GATE_UP = {"phi3"}


def _linear(name: str, component: str, role: str, n_in: int, n_out: int, bias: bool,
            layers: tuple[int, ...] = (), per_layer: int = 1) -> ParamGroup:
    return ParamGroup(name=name, component=component, kind="linear", role=role, in_features=n_in,
                      out_features=n_out, bias=bias, params_each=n_in * n_out + (n_out if bias else 0),
                      count=max(1, len(layers)) * per_layer, layers=layers)


def _norm(name: str, width: int, norm: NormSpec, layers: tuple[int, ...] = (), per_layer: int = 1,
          component: str = "norms") -> ParamGroup:
    each = 0 if not norm.affine else width * (2 if norm.kind == "layernorm" and norm.bias else 1)
    return ParamGroup(name=name, component=component, kind="norm", params_each=each,
                      count=max(1, len(layers)) * per_layer, layers=layers)


def _embedding(name: str, rows: int, width: int, component: str = "embeddings",
               layers: tuple[int, ...] = ()) -> ParamGroup:
    return ParamGroup(name=name, component=component, kind="embedding", params_each=rows * width,
                      count=max(1, len(layers)), layers=layers)


def parameter_groups(f: dict[str, Any]) -> list[ParamGroup]:
    """All parameter groups of the model described by the normalised fields ``f``."""
    hidden = f["hidden_size"]
    vocab = f["vocab_size"]
    norm: NormSpec = f["norm"]
    emb: EmbeddingSpec = f.get("embeddings") or EmbeddingSpec()
    model_type = f["model_type"] if "model_type" in f else f["config"]["model_type"]

    embed_width = emb.projection_dim or hidden
    groups = [_embedding("embed_tokens", vocab, embed_width)]
    if emb.learned_positions:
        groups.append(_embedding("embed_positions", emb.learned_positions, hidden))
    if emb.token_types:
        groups.append(_embedding("token_type_embeddings", emb.token_types, hidden))
    if emb.norm:
        groups.append(_norm("embeddings.norm", hidden, norm))
    if emb.projection_dim:
        groups.append(_linear("project_in", "other", "projection", embed_width, hidden, False))
        groups.append(_linear("project_out", "other", "projection", hidden, embed_width, False))

    if f["architecture"] == "encoder-decoder":
        encoder_layers = tuple(range(f["num_encoder_layers"]))
        buckets = f.get("relative_attention_buckets") or 0
        if emb.learned_positions:  # BART: each stack has its own position table and embedding LayerNorm
            groups.append(_embedding("encoder.embed_positions", emb.learned_positions, hidden))
        if emb.norm:
            groups.append(_norm("encoder.embeddings.norm", hidden, norm))
        groups += _layer_stack("encoder.layers", encoder_layers, f, model_type, cross_attention=False)
        if buckets:
            groups.append(_embedding("encoder.layers.0.relative_attention_bias", buckets,
                                     f["attention"].num_heads, component="other", layers=(0,)))
        if norm.final:
            groups.append(_norm("encoder.final_norm", hidden, norm))
        groups += _layer_stack("layers", tuple(range(f["num_layers"])), f, model_type, cross_attention=True)
        if buckets:
            groups.append(_embedding("layers.0.relative_attention_bias", buckets,
                                     f["attention"].num_heads, component="other", layers=(0,)))
    else:
        groups += _layer_stack("layers", tuple(range(f["num_layers"])), f, model_type, cross_attention=False)
        if f.get("relative_attention_buckets"):  # MPNet: one shared relative-position table
            groups.append(_embedding("relative_attention_bias", f["relative_attention_buckets"],
                                     f["attention"].num_heads, component="other"))

    if norm.final:
        groups.append(_norm("final_norm", hidden, norm))
    if f.get("pooler"):
        groups.append(_linear("pooler.dense", "other", "pooler", hidden, hidden, True))
    if f["architecture"] != "encoder" and not f["tie_word_embeddings"]:
        groups.append(_linear("lm_head", "lm_head", "lm_head", embed_width, vocab, bool(f.get("lm_head_bias"))))
    return groups


def _layer_stack(prefix: str, layers: tuple[int, ...], f: dict[str, Any], model_type: str,
                 cross_attention: bool) -> list[ParamGroup]:
    hidden = f["hidden_size"]
    norm: NormSpec = f["norm"]
    moe: MoESpec | None = f.get("moe")
    names = _MODULE_NAMES.get(model_type, _DEFAULT_NAMES)
    groups = _attention_groups(prefix, layers, f, model_type, names)
    if cross_attention:
        attention = f["attention"]
        inner = attention.num_heads * attention.head_dim
        for role in ("q", "k", "v"):
            groups.append(_linear(f"{prefix}.*.{names['cross_' + role]}", "attention", role, hidden, inner,
                                  attention.qkv_bias, layers))
        groups.append(_linear(f"{prefix}.*.{names['cross_o']}", "attention", "o", inner, hidden, attention.o_bias,
                              layers))
    groups.append(_norm(f"{prefix}.*.norms", hidden, norm, layers,
                        per_layer=norm.per_layer + (1 if cross_attention else 0)))

    moe_layers = tuple(i for i in layers if moe is not None and i in set(moe.moe_layers))
    dense_layers = tuple(i for i in layers if i not in set(moe_layers))
    if dense_layers:
        groups += _mlp_groups(prefix, dense_layers, hidden, f["mlp"].intermediate_size, f["mlp"].gated,
                              f["mlp"].bias, model_type, names, component="mlp")
    if moe_layers:
        groups += _moe_groups(prefix, moe_layers, hidden, moe, f["mlp"].gated)
    return groups


def _attention_groups(prefix: str, layers: tuple[int, ...], f: dict[str, Any], model_type: str,
                      names: dict[str, str]) -> list[ParamGroup]:
    hidden = f["hidden_size"]
    a = f["attention"]
    p = f"{prefix}.*."
    if a.mla is not None:
        m = a.mla
        qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim
        groups = []
        if m.q_lora_rank:
            groups += [
                _linear(p + "self_attn.q_a_proj", "attention", "q_a", hidden, m.q_lora_rank, a.qkv_bias, layers),
                _norm(p + "self_attn.q_a_layernorm", m.q_lora_rank, f["norm"], layers, component="attention"),
                _linear(p + "self_attn.q_b_proj", "attention", "q_b", m.q_lora_rank, a.num_heads * qk_dim, False,
                        layers),
            ]
        else:
            groups.append(_linear(p + "self_attn.q_proj", "attention", "q", hidden, a.num_heads * qk_dim, False,
                                  layers))
        groups += [
            _linear(p + "self_attn.kv_a_proj_with_mqa", "attention", "kv_a", hidden,
                    m.kv_lora_rank + m.qk_rope_head_dim, a.qkv_bias, layers),
            _norm(p + "self_attn.kv_a_layernorm", m.kv_lora_rank, f["norm"], layers, component="attention"),
            _linear(p + "self_attn.kv_b_proj", "attention", "kv_b", m.kv_lora_rank,
                    a.num_heads * (m.qk_nope_head_dim + m.v_head_dim), False, layers),
            _linear(p + "self_attn.o_proj", "attention", "o", a.num_heads * m.v_head_dim, hidden, a.o_bias, layers),
        ]
        if m.index_n_heads:  # DeepSeek-V3.2 lightning indexer (DSA): its own q/k, LayerNorm'd key, head weights
            groups += [
                _linear(p + "self_attn.indexer.wq_b", "attention", "indexer", m.q_lora_rank or hidden,
                        m.index_n_heads * m.index_head_dim, False, layers),
                _linear(p + "self_attn.indexer.wk", "attention", "indexer", hidden, m.index_head_dim, False, layers),
                _norm(p + "self_attn.indexer.k_norm", m.index_head_dim, NormSpec(kind="layernorm", bias=True,
                                                                                   per_layer=1), layers,
                      component="attention"),
                _linear(p + "self_attn.indexer.weights_proj", "attention", "indexer", hidden, m.index_n_heads,
                        False, layers),
            ]
        return groups

    q_out = a.num_heads * a.head_dim
    kv_out = a.num_kv_heads * a.head_dim
    if model_type in _FUSED_QKV:
        groups = [_linear(p + names["qkv"], "attention", "qkv", hidden, q_out + 2 * kv_out, a.qkv_bias, layers)]
    else:
        groups = [_linear(p + names[role], "attention", role, hidden, width, a.qkv_bias, layers)
                  for role, width in (("q", q_out), ("k", kv_out), ("v", kv_out))]
    groups.append(_linear(p + names["o"], "attention", "o", q_out, hidden, a.o_bias, layers))
    if a.qk_norm and a.qk_norm_width == "full":
        groups.append(_norm(p + "self_attn.q_norm", q_out, f["norm"], layers, component="norms"))
        groups.append(_norm(p + "self_attn.k_norm", kv_out, f["norm"], layers, component="norms"))
    elif a.qk_norm:
        groups.append(_norm(p + "self_attn.qk_norm", a.head_dim, f["norm"], layers, per_layer=2,
                            component="norms"))
    if a.sinks:
        groups.append(ParamGroup(name=p + "self_attn.sinks", component="attention", kind="parameter",
                                 params_each=a.num_heads, count=len(layers), layers=layers))
    return groups


def _mlp_groups(prefix: str, layers: tuple[int, ...], hidden: int, width: int, gated: bool, bias: bool,
                model_type: str, names: dict[str, str], component: str, per_layer: int = 1) -> list[ParamGroup]:
    p = f"{prefix}.*."
    if gated and model_type in _FUSED_GATE_UP:
        up = [_linear(p + names["gate_up"], component, "gate_up", hidden, 2 * width, bias, layers, per_layer)]
    elif gated:
        up = [_linear(p + names[role], component, role, hidden, width, bias, layers, per_layer)
              for role in ("gate", "up")]
    else:
        up = [_linear(p + names.get("up_ungated", names["up"]), component, "up", hidden, width, bias, layers,
                      per_layer)]
    return up + [_linear(p + names["down"], component, "down", width, hidden, bias, layers, per_layer)]


def _moe_groups(prefix: str, layers: tuple[int, ...], hidden: int, moe: MoESpec, gated: bool) -> list[ParamGroup]:
    groups = [_linear(f"{prefix}.*.mlp.router", "router", "router", hidden, moe.num_experts, moe.router_bias,
                      layers)]
    expert_names = {"gate": "mlp.experts.*.gate_proj", "up": "mlp.experts.*.up_proj",
                    "down": "mlp.experts.*.down_proj"}
    groups += _mlp_groups(prefix, layers, hidden, moe.expert_intermediate_size, gated, moe.expert_bias,
                          "moe-experts", expert_names, component="experts", per_layer=moe.num_experts)
    if moe.shared_expert_intermediate_size:
        shared_names = {"gate": "mlp.shared_experts.gate_proj", "up": "mlp.shared_experts.up_proj",
                        "down": "mlp.shared_experts.down_proj"}
        groups += _mlp_groups(prefix, layers, hidden, moe.shared_expert_intermediate_size, gated, False,
                              "moe-shared", shared_names, component="shared_experts")
        if moe.shared_expert_gate:
            groups.append(_linear(f"{prefix}.*.mlp.shared_expert_gate", "shared_experts", "router", hidden, 1,
                                  False, layers))
    return groups


def breakdown(groups: list[ParamGroup], moe: MoESpec | None) -> ParameterBreakdown:
    """Sum ``groups`` by component; ``active`` keeps only ``experts_per_token / num_experts`` of experts."""
    totals = dict.fromkeys(COMPONENTS, 0)
    for group in groups:
        totals[group.component] += group.params
    total = sum(totals.values())
    inactive = 0
    if moe is not None:
        inactive = totals["experts"] * (moe.num_experts - moe.experts_per_token) // moe.num_experts
    return ParameterBreakdown(**totals, total=total, active=total - inactive)

"""Turn a Hugging Face ``config.json`` into a :class:`~planner.models.spec.ModelSpec`.

Families name the same fact differently (``num_hidden_layers`` / ``n_layer`` / ``num_layers``) and
each config class has its own defaults for keys a config.json may omit (``tie_word_embeddings`` is
False for Llama but True for Gemma and GPT-2). Both live in the data tables below, one row per
``model_type``; the readers only look facts up. A missing required fact is an error naming the key,
never a guess. The defaults are checked against transformers' config classes by
``tests/test_model_params_exact.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from planner.errors import InvalidConfigError
from planner.models import params as _params
from planner.models.spec import (
    AttentionSpec,
    EmbeddingSpec,
    MLASpec,
    MLPSpec,
    ModelSpec,
    MoESpec,
    NormSpec,
)

# Key aliases: the first key present wins.
_KEYS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "n_embed", "dim"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "decoder_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size", "hidden_dim"),
    "vocab_size": ("vocab_size",),
    "max_positions": ("max_position_embeddings", "n_positions", "seq_length", "max_seq_len"),
    "activation": ("hidden_act", "hidden_activation", "activation_function", "feed_forward_proj"),
}

# One row per model_type: the family's layout and the config-class defaults for omitted keys.
# family: "llama" = pre-norm decoder with RoPE (the generic layout), others as named.
_PROFILES: dict[str, dict[str, Any]] = {
    "llama": {"tie": False, "bias_key": "attention_bias", "mlp_bias_key": "mlp_bias"},
    "mistral": {"tie": False, "all_sliding": True},
    "mixtral": {"tie": False, "all_sliding": True, "moe": "mixtral"},
    "qwen2": {"tie": False, "qkv_bias": True, "qwen_window": True},
    "qwen2_moe": {"tie": False, "qkv_bias": True, "qwen_window": True, "moe": "qwen2_moe"},
    "qwen3": {"tie": False, "bias_key": "attention_bias", "qk_norm": True, "qwen_window": True},
    "qwen3_moe": {"tie": False, "bias_key": "attention_bias", "qk_norm": True, "qwen_window": True,
                  "moe": "qwen3_moe"},
    "gemma": {"tie": True, "bias_key": "attention_bias"},
    "gemma2": {"tie": True, "bias_key": "attention_bias", "norms_per_layer": 4, "window_every": 2},
    "gemma3_text": {"tie": True, "bias_key": "attention_bias", "norms_per_layer": 4, "qk_norm": True,
                    "window_every": "sliding_window_pattern"},
    "phi3": {"tie": False},
    "deepseek_v2": {"tie": False, "bias_key": "attention_bias", "mla": True, "moe": "deepseek"},
    "deepseek_v3": {"tie": False, "bias_key": "attention_bias", "mla": True, "moe": "deepseek"},
    "gpt_oss": {"tie": False, "bias_key": "attention_bias", "sinks": True, "moe": "gpt_oss"},
    "granite": {"tie": False, "bias_key": "attention_bias", "mlp_bias_key": "mlp_bias"},
    "smollm3": {"tie": True, "bias_key": "attention_bias", "mlp_bias_key": "mlp_bias"},
    "internlm3": {"tie": False, "qkv_bias_key": "qkv_bias", "o_bias": False, "mlp_bias_key": "bias"},
    "ernie4_5": {"tie": True, "bias_key": "use_bias", "mlp_bias_key": "use_bias"},
    "glm": {"tie": False, "qkv_bias_key": "attention_bias", "o_bias": False},
    "exaone4": {"tie": False, "qk_norm": True, "bias_key": "attention_bias"},
    "olmo": {"tie": False, "norm": "nonparam"},
    "olmo2": {"tie": False, "qk_norm": True, "qk_norm_width": "full", "bias_key": "attention_bias"},
    "stablelm": {"tie": False, "norm": "layernorm", "qkv_bias_key": "use_qkv_bias", "o_bias": False},
    "starcoder2": {"tie": True, "norm": "layernorm", "all_bias_key": "use_bias", "gated": False},
    "cohere": {"tie": True, "norm": "layernorm_nobias", "parallel": True, "bias_key": "attention_bias",
               "qk_norm_key": "use_qk_norm", "qk_norm_width": "full"},
    "phimoe": {"tie": False, "norm": "layernorm", "bias_key": "attention_bias", "lm_head_bias": True,
               "all_sliding": True, "moe": "mixtral"},
    "olmoe": {"tie": False, "qk_norm": True, "qk_norm_width": "full", "bias_key": "attention_bias",
              "moe": "olmoe"},
    "glm4_moe": {"tie": False, "qkv_bias_key": "attention_bias", "o_bias": False, "qk_norm_key": "use_qk_norm",
                 "moe": "deepseek"},
    "deepseek_v32": {"tie": False, "bias_key": "attention_bias", "mla": True, "moe": "deepseek"},
    "gptj": {"tie": False, "norm": "layernorm", "parallel": True, "gated": False, "qkv_bias": False,
             "o_bias": False, "mlp_bias_key": "_always", "lm_head_bias": True, "ffn_ratio": 4},
    "gpt_neo": {"tie": True, "norm": "layernorm", "gated": False, "qkv_bias": False, "o_bias": True,
                "mlp_bias_key": "_always", "learned_positions": True, "ffn_ratio": 4},
    "bloom": {"tie": True, "norm": "layernorm", "gated": False, "bias_key": "_always", "mlp_bias_key": "_always",
              "embed_norm": True, "ffn_ratio": 4},
    "mpt": {"tie": True, "norm": "layernorm_nobias", "gated": False, "ffn_ratio_key": "expansion_ratio"},
    "glm4_moe_lite": {"tie": False, "bias_key": "attention_bias", "mla": True, "moe": "deepseek"},
    "glm_moe_dsa": {"tie": False, "bias_key": "attention_bias", "mla": True, "moe": "deepseek"},
    "minimax_m2": {"tie": False, "qk_norm": True, "qk_norm_width": "full", "moe": "mixtral"},
    "exaone": {"tie": False},
    # trust_remote_code families (transformers cannot build them offline; counts are not meta-checked)
    "internlm2": {"tie": False, "bias_key": "bias"},
    "baichuan": {"tie": False},
    "minicpm": {"tie": True, "moe": "olmoe"},
    "mimo": {"tie": False, "qkv_bias": True},
    "orion": {"tie": False, "norm": "layernorm"},
    "deepseek": {"tie": False, "bias_key": "attention_bias", "moe": "deepseek"},
    "kimi_k2": {"tie": False, "bias_key": "attention_bias", "mla": True, "moe": "deepseek"},
    "roberta": {"tie": True, "family": "bert"},
    "xlm-roberta": {"tie": True, "family": "bert"},
    "mt5": {"tie": True, "family": "t5"},
    "distilbert": {"tie": True, "family": "bert", "token_types": False, "pooler": False},
    "mpnet": {"tie": True, "family": "bert", "token_types": False, "relative_buckets": True},
    "qwen": {"tie": False, "family": "qwen1"},
    "gpt2": {"tie": True, "family": "gpt2"},
    "gpt_bigcode": {"tie": True, "family": "gpt2"},
    "opt": {"tie": True, "family": "opt"},
    "falcon": {"tie": True, "family": "falcon"},
    "phi": {"tie": False, "family": "phi"},
    "gpt_neox": {"tie": False, "family": "gpt_neox"},
    "bert": {"tie": True, "family": "bert"},
    "t5": {"tie": True, "family": "t5"},
    "bart": {"tie": True, "family": "bart"},
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_PROFILES))


class _Reader:
    """Reads facts from a config dict, naming the key in every error."""

    def __init__(self, config: dict[str, Any], label: str):
        self.config = config
        self.label = label

    def get(self, fact: str, default: Any = None) -> Any:
        for key in _KEYS.get(fact, (fact,)):
            if self.config.get(key) is not None:
                return self.config[key]
        return default

    def require_int(self, fact: str) -> int:
        value = self.get(fact)
        keys = " / ".join(_KEYS.get(fact, (fact,)))
        if value is None:
            raise InvalidConfigError(f"{self.label}: config has no {keys!s} (needed for {fact}).")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidConfigError(f"{self.label}: {keys} must be a positive integer, got {value!r}.")
        return value

    def optional_int(self, fact: str, default: int | None = None) -> int | None:
        value = self.get(fact)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidConfigError(f"{self.label}: {fact} must be a non-negative integer, got {value!r}.")
        return value

    def flag(self, key: str, default: bool) -> bool:
        if key == "_always":  # a profile's way to say "this family always has it"
            return True
        value = self.config.get(key)
        return default if value is None else bool(value)


def spec_from_config(config: dict[str, Any], *, name: str | None = None, source: str = "dict") -> ModelSpec:
    """Normalise ``config`` (a parsed config.json) into a ModelSpec with exact parameter groups."""
    if not isinstance(config, dict):
        raise InvalidConfigError(f"a model config must be a dict (parsed config.json), got {type(config).__name__}.")
    label = name or config.get("_name_or_path") or "model config"
    model_type = config.get("model_type")
    if not model_type:
        raise InvalidConfigError(f"{label}: config has no 'model_type'; fitplan reads the architecture from it.")
    config = _flatten_text_config(config)
    model_type = config["model_type"]
    profile = _PROFILES.get(model_type)
    assumptions: tuple[str, ...] = ()
    if profile is None:
        profile, assumption = _generic_profile(config, label, model_type)
        assumptions = (assumption,)
    reader = _Reader(config, label)
    build = _FAMILY_BUILDERS[profile.get("family", "llama")]
    # Facts every family has; a family reader overrides them where its layout differs (T5, BERT).
    fields: dict[str, Any] = dict(
        architecture="decoder",
        hidden_size=reader.require_int("hidden_size"),
        num_layers=reader.require_int("num_layers"),
        vocab_size=reader.require_int("vocab_size"),
        tie_word_embeddings=reader.flag("tie_word_embeddings", profile["tie"]),
    )
    fields.update(build(reader, profile))
    fields.setdefault("max_position_embeddings", reader.optional_int("max_positions"))
    fields.update(
        name=name or config.get("_name_or_path") or model_type,
        model_type=model_type,
        source=source,
        torch_dtype=config.get("torch_dtype") or config.get("dtype"),
        quantization_config=config.get("quantization_config"),
        config=config,
        assumptions=assumptions,
    )
    groups = _params.parameter_groups(fields)
    return ModelSpec(param_groups=tuple(groups), params=_params.breakdown(groups, fields.get("moe")), **fields)


# Config keys that mark a structure the generic reader cannot count (each needs a dedicated reader).
_SPECIAL_STRUCTURES: dict[str, str] = {
    "num_local_experts": "mixture-of-experts", "num_experts": "mixture-of-experts",
    "n_routed_experts": "mixture-of-experts", "moe_intermediate_size": "mixture-of-experts",
    "kv_lora_rank": "multi-head latent attention", "alibi": "ALiBi attention",
    "parallel_attn": "parallel attention/MLP blocks", "use_parallel_residual": "parallel attention/MLP blocks",
    "hybrid_override_pattern": "hybrid Mamba/attention layers", "attn_layer_period": "hybrid Mamba/attention layers",
    "mamba_d_state": "hybrid Mamba/attention layers", "block_configs": "per-layer block configurations",
    "linear_attn_config": "linear-attention layers",
}
_GENERIC_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size")
_ENCODER_HEADS = ("MaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")


def _generic_profile(config: dict[str, Any], label: str, model_type: str) -> tuple[dict[str, Any], str]:
    """A profile for a ``model_type`` without a dedicated reader whose config has the standard fields.

    Decoders are read as the Llama layout (pre-norm, q/k/v/o, gated MLP), encoders as BERT; a config
    that shows a structure those layouts do not have (MoE, MLA, ALiBi, parallel or hybrid blocks) is
    refused with the reason, because its count would be wrong.
    """
    from hardware_db.names import did_you_mean

    reader = _Reader(config, label)
    missing = [fact for fact in _GENERIC_FIELDS if reader.get(fact) is None]
    special = sorted({what for key, what in _SPECIAL_STRUCTURES.items() if config.get(key)})
    if missing or special:
        why = (f"its config has {', '.join(special)}, which needs a dedicated reader" if special else
               "its config lacks " + ", ".join(" / ".join(_KEYS.get(f, (f,))) for f in missing))
        raise InvalidConfigError(
            f"{label}: model_type {model_type!r} has no dedicated reader and {why}.{did_you_mean(model_type, _PROFILES)} "
            f"({len(SUPPORTED_MODEL_TYPES)} model_types have one: planner.models.hf_config.SUPPORTED_MODEL_TYPES.)")
    architectures = " ".join(str(a) for a in config.get("architectures") or ())
    if any(head in architectures for head in _ENCODER_HEADS) or config.get("is_decoder") is False:
        return ({"tie": True, "family": "bert"},
                f"model_type {model_type!r} has no dedicated reader: read as a BERT-style encoder (post-norm "
                f"LayerNorm, learned positions, q/k/v/o and up/down with biases, pooler); its count may differ.")
    layernorm = config.get("layer_norm_eps") is not None and config.get("rms_norm_eps") is None
    # Activations only ever used without a gate (Arcee/Nemotron relu2, Apertus xIELU): a plain up/down MLP.
    gated = str(reader.get("activation", "silu")).lower() not in ("relu2", "xielu", "relu_squared")
    profile: dict[str, Any] = {"tie": False, "bias_key": "attention_bias", "mlp_bias_key": "mlp_bias",
                               "norm": "layernorm" if layernorm else "rmsnorm", "gated": gated}
    tie = config.get("tie_word_embeddings")
    tie_text = ("tied lm_head" if tie else "separate lm_head") + ("" if tie is not None else
                                                                   " (tie_word_embeddings absent: assumed untied)")
    bias = "with" if config.get("attention_bias") else "without"
    return profile, (f"model_type {model_type!r} has no dedicated reader: read as a generic pre-norm decoder "
                     f"({'LayerNorm' if layernorm else 'RMSNorm'}, q/k/v/o {bias} bias, {'gated' if gated else 'plain'} "
                     f"MLP, {tie_text}); "
                     f"check the parameter count against the model card.")


def _flatten_text_config(config: dict[str, Any]) -> dict[str, Any]:
    """Multimodal wrappers (Gemma 3 4B+, Llava-style) keep the language model in ``text_config``."""
    text = config.get("text_config")
    if isinstance(text, dict) and text.get("model_type") and config.get("model_type") not in _PROFILES:
        merged = dict(text)
        merged.setdefault("tie_word_embeddings", config.get("tie_word_embeddings"))
        return merged
    return config


# --------------------------------------------------------------------------------------------
# Family readers: each returns the ModelSpec fields (without name/source/params).
# --------------------------------------------------------------------------------------------

def _attention_dims(reader: _Reader, hidden: int) -> tuple[int, int, int]:
    heads = reader.require_int("num_heads")
    kv_heads = reader.optional_int("num_kv_heads", heads) or heads
    head_dim = reader.optional_int("head_dim") or reader.optional_int("kv_channels") or reader.optional_int("d_kv")
    if head_dim is None:
        if hidden % heads:
            raise InvalidConfigError(
                f"{reader.label}: hidden_size {hidden} is not divisible by {heads} heads and no head_dim is given.")
        head_dim = hidden // heads
    if heads % kv_heads:
        raise InvalidConfigError(
            f"{reader.label}: {heads} attention heads are not a multiple of {kv_heads} key/value heads.")
    return heads, kv_heads, head_dim


def _layer_types(reader: _Reader, profile: dict[str, Any], num_layers: int) -> tuple[tuple[str, ...], int | None]:
    config = reader.config
    window = config.get("sliding_window")
    explicit = config.get("layer_types")
    if explicit:
        if len(explicit) != num_layers:
            raise InvalidConfigError(
                f"{reader.label}: layer_types has {len(explicit)} entries for {num_layers} layers.")
        types = tuple("sliding_attention" if t == "sliding_attention" else "full_attention" for t in explicit)
        return types, window if "sliding_attention" in types else None
    if profile.get("qwen_window"):
        if not config.get("use_sliding_window") or not window:
            return ("full_attention",) * num_layers, None
        first = config.get("max_window_layers", num_layers)
        return tuple("sliding_attention" if i >= first else "full_attention" for i in range(num_layers)), window
    every = profile.get("window_every")
    if every and window:
        period = config.get(every) if isinstance(every, str) else every
        period = period or 6
        return tuple("full_attention" if (i + 1) % period == 0 else "sliding_attention"
                     for i in range(num_layers)), window
    if profile.get("all_sliding") and window:
        return ("sliding_attention",) * num_layers, window
    return ("full_attention",) * num_layers, None


def _moe(reader: _Reader, kind: str | None, num_layers: int, hidden: int) -> MoESpec | None:
    if kind is None:
        return None
    c = reader.config
    if kind == "mixtral":
        return MoESpec(num_experts=c["num_local_experts"], experts_per_token=c["num_experts_per_tok"],
                       expert_intermediate_size=reader.require_int("intermediate_size"),
                       moe_layers=tuple(range(num_layers)))
    if kind == "olmoe":
        if not c.get("num_experts"):
            return None
        return MoESpec(num_experts=c["num_experts"], experts_per_token=c["num_experts_per_tok"],
                       expert_intermediate_size=reader.require_int("intermediate_size"),
                       moe_layers=tuple(range(num_layers)))
    if kind == "gpt_oss":
        return MoESpec(num_experts=c["num_local_experts"],
                       experts_per_token=c.get("num_experts_per_tok") or c["experts_per_token"],
                       expert_intermediate_size=reader.require_int("intermediate_size"),
                       router_bias=True, expert_bias=True, moe_layers=tuple(range(num_layers)))
    if kind in ("qwen3_moe", "qwen2_moe"):
        step = c.get("decoder_sparse_step", 1) or 1
        dense = set(c.get("mlp_only_layers") or [])
        layers = tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)
        shared = c.get("shared_expert_intermediate_size", 0) if kind == "qwen2_moe" else 0
        return MoESpec(num_experts=c.get("num_experts") or c["num_local_experts"],  # 5.x to_dict() name
                       experts_per_token=c["num_experts_per_tok"],
                       expert_intermediate_size=c["moe_intermediate_size"],
                       num_shared_experts=1 if shared else 0, shared_expert_intermediate_size=shared,
                       shared_expert_gate=bool(shared), moe_layers=layers)
    if kind == "deepseek":
        experts = c.get("n_routed_experts")
        if not experts:
            return None
        first_dense = c.get("first_k_dense_replace", 0) or 0
        freq = c.get("moe_layer_freq", 1) or 1
        layers = tuple(i for i in range(num_layers) if i >= first_dense and i % freq == 0)
        shared = c.get("n_shared_experts") or 0
        return MoESpec(num_experts=experts, experts_per_token=c["num_experts_per_tok"],
                       expert_intermediate_size=c["moe_intermediate_size"], num_shared_experts=shared,
                       shared_expert_intermediate_size=shared * c["moe_intermediate_size"], moe_layers=layers)
    raise InvalidConfigError(f"{reader.label}: unknown MoE layout {kind!r}.")


def _norm_spec(profile: dict[str, Any], per_layer: int) -> NormSpec:
    kind = profile.get("norm", "rmsnorm")
    if kind == "layernorm":
        return NormSpec(kind="layernorm", bias=True, per_layer=per_layer)
    if kind == "layernorm_nobias":
        return NormSpec(kind="layernorm", bias=False, per_layer=per_layer)
    if kind == "nonparam":
        return NormSpec(kind="layernorm", bias=False, affine=False, per_layer=per_layer)
    return NormSpec(kind="rmsnorm", bias=False, per_layer=per_layer)


def _read_llama_like(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    """The generic pre-norm decoder: q/k/v/o attention (GQA or MLA), a gated (or plain) MLP, RMSNorm or
    LayerNorm. Profile keys say where a family departs from Llama: which config key switches biases on
    (``bias_key`` q/k/v/o, ``qkv_bias_key`` q/k/v only, ``mlp_bias_key``, ``all_bias_key`` every linear),
    ``norm``, ``qk_norm`` (+ ``qk_norm_key``/``qk_norm_width``), ``gated``, ``parallel`` and ``moe``."""
    config = reader.config
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads, kv_heads, head_dim = _attention_dims(reader, hidden)
    all_bias = reader.flag(profile["all_bias_key"], True) if "all_bias_key" in profile else None
    bias = reader.flag(profile["bias_key"], False) if "bias_key" in profile else bool(all_bias)
    qkv_bias = profile.get("qkv_bias", bias)
    if "qkv_bias_key" in profile:
        qkv_bias = reader.flag(profile["qkv_bias_key"], profile.get("qkv_bias", False))
    o_bias = profile.get("o_bias", bias)
    if "mlp_bias_key" in profile:
        mlp_bias = reader.flag(profile["mlp_bias_key"], False)
    else:
        mlp_bias = bool(all_bias)
    qk_norm = profile.get("qk_norm", False)
    if "qk_norm_key" in profile:
        qk_norm = reader.flag(profile["qk_norm_key"], False)
    mla = None
    if profile.get("mla"):
        mla = MLASpec(q_lora_rank=config.get("q_lora_rank"), kv_lora_rank=config["kv_lora_rank"],
                      qk_nope_head_dim=config["qk_nope_head_dim"], qk_rope_head_dim=config["qk_rope_head_dim"],
                      v_head_dim=config["v_head_dim"], index_n_heads=config.get("index_n_heads") or 0,
                      index_head_dim=config.get("index_head_dim") or 0)
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        kv_heads = heads
    layer_types, window = _layer_types(reader, profile, num_layers)
    moe = _moe(reader, profile.get("moe"), num_layers, hidden)
    if "ffn_ratio_key" in profile and reader.get("intermediate_size") is None:
        intermediate = int(hidden * (config.get(profile["ffn_ratio_key"]) or 4))
    elif "ffn_ratio" in profile and reader.get("intermediate_size") is None:
        intermediate = profile["ffn_ratio"] * hidden
    else:
        intermediate = reader.require_int("intermediate_size")
    per_layer = profile.get("norms_per_layer", 1 if profile.get("parallel") else 2)
    positions = reader.optional_int("max_positions", 2048) if profile.get("learned_positions") else 0
    fields = {}
    if profile.get("learned_positions") or profile.get("embed_norm"):
        fields["embeddings"] = EmbeddingSpec(learned_positions=positions or 0, norm=bool(profile.get("embed_norm")))
    return fields | dict(
        attention=AttentionSpec(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                                qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm,
                                qk_norm_width=profile.get("qk_norm_width", "head"),
                                sinks=profile.get("sinks", False), sliding_window=window,
                                layer_types=layer_types, mla=mla),
        mlp=MLPSpec(intermediate_size=intermediate, gated=profile.get("gated", True), bias=mlp_bias,
                    activation=str(reader.get("activation", "silu"))),
        moe=moe,
        norm=_norm_spec(profile, per_layer),
        parallel_attention=bool(profile.get("parallel", False)),
        lm_head_bias=bool(profile.get("lm_head_bias", False)),
    )


def _read_qwen1(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    """Qwen-1 (remote code): fused c_attn with bias, gated MLP whose config width is the sum of halves."""
    fields = _read_llama_like(reader, {**profile, "qkv_bias": True})
    no_bias = reader.flag("no_bias", True)
    total = reader.require_int("intermediate_size")
    fields["attention"] = fields["attention"].model_copy(update={"o_bias": not no_bias})
    fields["mlp"] = MLPSpec(intermediate_size=total // 2, gated=True, bias=not no_bias, activation="silu")
    return fields


def _read_gpt2(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads = reader.require_int("num_heads")
    head_dim = hidden // heads
    kv_heads = 1 if reader.flag("multi_query", reader.config.get("model_type") == "gpt_bigcode") else heads
    positions = reader.require_int("max_positions")
    return dict(
        max_position_embeddings=positions,
        attention=AttentionSpec(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, qkv_bias=True,
                                o_bias=True, layer_types=("full_attention",) * num_layers),
        mlp=MLPSpec(intermediate_size=reader.optional_int("intermediate_size") or 4 * hidden, gated=False,
                    bias=True, activation=str(reader.get("activation", "gelu_new"))),
        norm=NormSpec(kind="layernorm", bias=True, per_layer=2),
        embeddings=EmbeddingSpec(learned_positions=positions),
    )


def _read_opt(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    c = reader.config
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads = reader.require_int("num_heads")
    positions = reader.require_int("max_positions")
    projection = c.get("word_embed_proj_dim", hidden)
    bias = reader.flag("enable_bias", True)
    pre_norm = reader.flag("do_layer_norm_before", True)
    final = pre_norm and not reader.flag("_remove_final_layer_norm", False)
    return dict(
        max_position_embeddings=positions,
        attention=AttentionSpec(num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, qkv_bias=bias,
                                o_bias=bias, layer_types=("full_attention",) * num_layers),
        mlp=MLPSpec(intermediate_size=reader.require_int("intermediate_size"), gated=False, bias=bias,
                    activation=str(reader.get("activation", "relu"))),
        norm=NormSpec(kind="layernorm", bias=reader.flag("layer_norm_elementwise_affine", True), per_layer=2,
                      final=final),
        # OPT's learned positions are offset by 2 (OPTLearnedPositionalEmbedding).
        embeddings=EmbeddingSpec(learned_positions=positions + 2,
                                 projection_dim=projection if projection != hidden else None),
    )


def _read_falcon(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    c = reader.config
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads = reader.require_int("num_heads")
    new_arch = reader.flag("new_decoder_architecture", False)
    if new_arch:
        kv_heads = reader.optional_int("num_kv_heads", heads) or heads
    else:
        kv_heads = 1 if reader.flag("multi_query", True) else heads
    parallel = reader.flag("parallel_attn", True)
    if new_arch:
        norms = c.get("num_ln_in_parallel_attn") or 2
    else:
        norms = 1 if parallel else 2
    bias = reader.flag("bias", False)
    return dict(
        max_position_embeddings=reader.optional_int("max_positions", 2048),
        attention=AttentionSpec(num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                                qkv_bias=bias, o_bias=bias, layer_types=("full_attention",) * num_layers),
        mlp=MLPSpec(intermediate_size=reader.optional_int("intermediate_size") or 4 * hidden, gated=False,
                    bias=bias, activation="gelu"),
        norm=NormSpec(kind="layernorm", bias=True, per_layer=norms),
        parallel_attention=parallel,
    )


def _read_phi(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    """Phi-1/1.5/2 (PhiForCausalLM): parallel attention + GELU MLP behind one LayerNorm, biased
    projections (``dense`` output), a final LayerNorm and an lm_head with a bias."""
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads, kv_heads, head_dim = _attention_dims(reader, hidden)
    return dict(
        attention=AttentionSpec(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, qkv_bias=True,
                                o_bias=True, qk_norm=reader.flag("qk_layernorm", False),
                                layer_types=("full_attention",) * num_layers),
        mlp=MLPSpec(intermediate_size=reader.require_int("intermediate_size"), gated=False, bias=True,
                    activation=str(reader.get("activation", "gelu_new"))),
        norm=NormSpec(kind="layernorm", bias=True, per_layer=1),
        parallel_attention=True,
        lm_head_bias=True,
    )


def _read_gpt_neox(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    """GPT-NeoX / StableLM-alpha / Pythia: fused biased query_key_value, two LayerNorms per layer
    (parallel residual or not, both exist), GELU MLP with biases, untied embed_out without bias."""
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads = reader.require_int("num_heads")
    bias = reader.flag("attention_bias", True)
    return dict(
        attention=AttentionSpec(num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, qkv_bias=bias,
                                o_bias=bias, layer_types=("full_attention",) * num_layers),
        mlp=MLPSpec(intermediate_size=reader.require_int("intermediate_size"), gated=False, bias=True,
                    activation=str(reader.get("activation", "gelu"))),
        norm=NormSpec(kind="layernorm", bias=True, per_layer=2),
        parallel_attention=reader.flag("use_parallel_residual", True),
    )


def _read_bert(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    hidden = reader.require_int("hidden_size")
    num_layers = reader.require_int("num_layers")
    heads = reader.require_int("num_heads")
    positions = reader.optional_int("max_positions", 512) or 512
    return dict(
        architecture="encoder",
        max_position_embeddings=positions,
        attention=AttentionSpec(num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, qkv_bias=True,
                                o_bias=True, layer_types=("full_attention",) * num_layers),
        mlp=MLPSpec(intermediate_size=reader.optional_int("intermediate_size") or 4 * hidden, gated=False,
                    bias=True, activation=str(reader.get("activation", "gelu"))),
        norm=NormSpec(kind="layernorm", bias=True, per_layer=2, final=False),
        embeddings=EmbeddingSpec(learned_positions=positions,
                                 token_types=(reader.optional_int("type_vocab_size", 2) or 0
                                              if profile.get("token_types", True) else 0), norm=True),
        pooler=profile.get("pooler", True),
        relative_attention_buckets=(reader.optional_int("relative_attention_num_buckets", 32) or 0
                                    if profile.get("relative_buckets") else 0),
    )


def _read_t5(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    c = reader.config
    hidden = reader.require_int("hidden_size")
    encoder_layers = reader.require_int("num_layers")
    decoder_layers = c.get("num_decoder_layers") or encoder_layers
    heads = reader.require_int("num_heads")
    proj = str(c.get("feed_forward_proj", "relu"))
    return dict(
        architecture="encoder-decoder",
        num_layers=decoder_layers,
        num_encoder_layers=encoder_layers,
        max_position_embeddings=None,
        attention=AttentionSpec(num_heads=heads, num_kv_heads=heads, head_dim=reader.require_int("d_kv"),
                                layer_types=("full_attention",) * decoder_layers),
        mlp=MLPSpec(intermediate_size=reader.require_int("intermediate_size"), gated=proj.startswith("gated"),
                    bias=False, activation=proj.removeprefix("gated-")),
        norm=NormSpec(kind="rmsnorm", bias=False, per_layer=2),
        relative_attention_buckets=c.get("relative_attention_num_buckets", 32),
    )


def _read_bart(reader: _Reader, profile: dict[str, Any]) -> dict[str, Any]:
    """BART (BartConfig): post-norm LayerNorm encoder-decoder with biases everywhere, a learned position
    table of max_position_embeddings + 2 rows per stack (BartLearnedPositionalEmbedding offset 2) and a
    layernorm_embedding per stack; lm_head tied to the shared embedding."""
    c = reader.config
    hidden = reader.require_int("hidden_size")
    decoder_layers = int(c.get("decoder_layers") or 12)
    encoder_layers = int(c.get("encoder_layers") or decoder_layers)
    heads = int(c.get("decoder_attention_heads") or 16)
    positions = reader.optional_int("max_positions", 1024) or 1024
    return dict(
        architecture="encoder-decoder",
        num_layers=decoder_layers,
        num_encoder_layers=encoder_layers,
        max_position_embeddings=positions,
        attention=AttentionSpec(num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, qkv_bias=True,
                                o_bias=True, layer_types=("full_attention",) * decoder_layers),
        mlp=MLPSpec(intermediate_size=int(c.get("decoder_ffn_dim") or 4 * hidden), gated=False, bias=True,
                    activation=str(c.get("activation_function", "gelu"))),
        norm=NormSpec(kind="layernorm", bias=True, per_layer=2, final=False),
        embeddings=EmbeddingSpec(learned_positions=positions + 2, norm=True),
    )


_FAMILY_BUILDERS: dict[str, Callable[[_Reader, dict[str, Any]], dict[str, Any]]] = {
    "llama": _read_llama_like,
    "qwen1": _read_qwen1,
    "gpt2": _read_gpt2,
    "opt": _read_opt,
    "falcon": _read_falcon,
    "phi": _read_phi,
    "gpt_neox": _read_gpt_neox,
    "bert": _read_bert,
    "t5": _read_t5,
    "bart": _read_bart,
}

"""The typed description of a model architecture that every estimate starts from.

A :class:`ModelSpec` holds the facts of a Hugging Face ``config.json`` in one normalised vocabulary
(``num_kv_heads`` whatever the family calls it), plus the exact list of parameter tensors the model
owns (:class:`ParamGroup`) and their sum by component (:class:`ParameterBreakdown`). It never needs
torch: the parameter list is computed from the config by :mod:`planner.models.params`.

Build one with :func:`planner.get_model` (a registry name, a local directory, a ``config.json`` path, a
dict or a hub id) or :meth:`ModelSpec.from_config`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Architecture = Literal["decoder", "encoder", "encoder-decoder"]
Component = Literal[
    "embeddings", "attention", "mlp", "experts", "shared_experts", "router", "norms", "lm_head", "other"
]
COMPONENTS: tuple[str, ...] = (
    "embeddings", "attention", "mlp", "experts", "shared_experts", "router", "norms", "lm_head", "other"
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MLASpec(_Frozen):
    """DeepSeek multi-head latent attention (DeepSeek-V2 paper, section 2.1).

    The KV cache holds one compressed latent of ``kv_lora_rank`` plus one shared RoPE key of
    ``qk_rope_head_dim`` per token and layer, instead of full per-head keys and values.
    """

    q_lora_rank: int | None = Field(description="rank of the query down-projection; None = full q_proj")
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_n_heads: int = Field(0, ge=0, description="DeepSeek-V3.2 sparse-attention indexer heads (0 = none)")
    index_head_dim: int = Field(0, ge=0)


class AttentionSpec(_Frozen):
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0, description="per-head width; may differ from hidden/heads (Gemma, Qwen3)")
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = Field(False, description="RMSNorm over q and k per head (Qwen3, Gemma 3)")
    qk_norm_width: Literal["head", "full"] = Field(
        "head", description="qk norm weights per head_dim (Qwen3) or over all heads' width (OLMo-2, Cohere)")
    sinks: bool = Field(False, description="one learned attention-sink logit per head (gpt-oss)")
    sliding_window: int | None = Field(None, description="window of the sliding-attention layers, tokens")
    layer_types: tuple[Literal["full_attention", "sliding_attention"], ...] = Field(
        description="attention type of each decoder layer")
    mla: MLASpec | None = None

    @property
    def kind(self) -> Literal["mha", "gqa", "mqa", "mla"]:
        if self.mla is not None:
            return "mla"
        if self.num_kv_heads == self.num_heads:
            return "mha"
        return "mqa" if self.num_kv_heads == 1 else "gqa"

    @property
    def num_sliding_layers(self) -> int:
        return sum(1 for t in self.layer_types if t == "sliding_attention")

    @property
    def num_full_layers(self) -> int:
        return len(self.layer_types) - self.num_sliding_layers


class MLPSpec(_Frozen):
    intermediate_size: int = Field(gt=0, description="width of the dense MLP (per half when gated)")
    gated: bool = Field(description="gate*up (SwiGLU/GeGLU, 3 matrices) or up only (2 matrices)")
    bias: bool = False
    activation: str


class MoESpec(_Frozen):
    """Mixture-of-experts layout. Memory holds every expert; each token reads only the routed ones."""

    num_experts: int = Field(gt=0)
    experts_per_token: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    num_shared_experts: int = Field(0, ge=0)
    shared_expert_intermediate_size: int = Field(0, ge=0, description="total width of the shared MLP")
    shared_expert_gate: bool = Field(False, description="sigmoid gate on the shared expert (Qwen2-MoE)")
    router_bias: bool = False
    expert_bias: bool = False
    moe_layers: tuple[int, ...] = Field(description="indices of the decoder layers that are MoE")


class NormSpec(_Frozen):
    kind: Literal["rmsnorm", "layernorm"]
    bias: bool = Field(description="LayerNorm with a bias vector (2 x width parameters)")
    affine: bool = Field(True, description="False = no learned scale at all (OLMo-1's non-parametric LayerNorm)")
    per_layer: int = Field(ge=1, description="norms in each layer (2 = pre-attn + pre-MLP; Gemma 2/3 = 4)")
    final: bool = Field(True, description="a norm after the last layer")


class EmbeddingSpec(_Frozen):
    learned_positions: int = Field(0, ge=0, description="rows of a learned position table (0 = RoPE/none)")
    token_types: int = Field(0, ge=0, description="rows of BERT's token-type table")
    norm: bool = Field(False, description="LayerNorm right after the embeddings (BERT)")
    projection_dim: int | None = Field(None, description="OPT-350m word_embed_proj_dim (project_in/out)")


class ParamGroup(_Frozen):
    """``count`` identical parameter tensors (or modules) of ``params_each`` parameters.

    ``name`` follows the Hugging Face module path with ``*`` for the layer/expert index, e.g.
    ``layers.*.self_attn.q_proj``. Linear modules carry their shape so that LoRA adapters,
    quantization groups and structured pruning can be computed from the same list.
    """

    name: str
    component: Component
    kind: Literal["linear", "embedding", "norm", "parameter"]
    params_each: int = Field(ge=0)
    count: int = Field(ge=1)
    role: str | None = Field(None, description="what a linear does: q, k, v, qkv, o, gate, up, gate_up, down, "
                             "router, lm_head, ... (fused modules have fused roles)")
    in_features: int | None = None
    out_features: int | None = None
    bias: bool = False
    layers: tuple[int, ...] = Field((), description="layer indices this group lives in (empty = not in a layer)")

    @property
    def params(self) -> int:
        return self.params_each * self.count

    @property
    def leaf_name(self) -> str:
        """The last component of the module path (``q_proj``), what LoRA target lists match on."""
        return self.name.rsplit(".", 1)[-1]


class ParameterBreakdown(_Frozen):
    """Parameter counts by component. ``total`` equals ``sum(p.numel() for p in model.parameters())``."""

    embeddings: int
    attention: int
    mlp: int
    experts: int
    shared_experts: int
    router: int
    norms: int
    lm_head: int
    other: int
    total: int
    active: int = Field(description="parameters touched per token: total minus the unrouted experts")

    def as_dict(self) -> dict[str, int]:
        return self.model_dump()


class ModelSpec(_Frozen):
    """Normalised architecture facts plus exact parameter accounting for one model."""

    name: str
    model_type: str = Field(description="the config's model_type (llama, qwen3_moe, bert, t5, ...)")
    architecture: Architecture
    source: str = Field(description="where the spec came from: 'registry', a path, 'dict' or 'hub:<id>'")
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0, description="decoder layers (encoder layers for encoder-only models)")
    num_encoder_layers: int = Field(0, ge=0, description="encoder layers of an encoder-decoder model")
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int | None = None
    attention: AttentionSpec
    mlp: MLPSpec
    moe: MoESpec | None = None
    norm: NormSpec
    embeddings: EmbeddingSpec = EmbeddingSpec()
    tie_word_embeddings: bool
    pooler: bool = Field(False, description="BERT pooler dense layer (AutoModel includes it)")
    relative_attention_buckets: int = Field(0, ge=0, description="T5 relative position buckets")
    parallel_attention: bool = Field(False, description="attention and MLP read the same input (Falcon)")
    lm_head_bias: bool = Field(False, description="lm_head has a bias vector (Phi-1/1.5/2)")
    torch_dtype: str | None = Field(None, description="dtype the checkpoint is stored in, if stated")
    quantization_config: dict[str, Any] | None = Field(
        None, description="the checkpoint's own quantization_config (GPTQ/AWQ/FP8/MXFP4), if any")
    param_groups: tuple[ParamGroup, ...] = Field(repr=False)
    params: ParameterBreakdown
    config: dict[str, Any] = Field(repr=False, description="the raw config.json the spec was built from")
    assumptions: tuple[str, ...] = Field(
        (), description="what was assumed to read the config (a model_type without a dedicated reader)")

    # -- convenience views -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def num_heads(self) -> int:
        return self.attention.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.attention.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim

    @property
    def total_layers(self) -> int:
        """All transformer blocks: decoder plus encoder layers."""
        return self.num_layers + self.num_encoder_layers

    def linear_groups(self) -> list[ParamGroup]:
        """Every Linear-module group (what quantization and LoRA act on)."""
        return [g for g in self.param_groups if g.kind == "linear"]

    def layer_params(self) -> list[int]:
        """Parameters of each decoder layer, in order (for pipeline stages and ZeRO-3 buffers)."""
        per_layer = [0] * self.num_layers
        for group in self.param_groups:
            if group.layers and group.name.startswith("layers."):
                share = group.params // len(group.layers)
                for index in group.layers:
                    per_layer[index] += share
        return per_layer

    def summary(self) -> str:
        p = self.params
        active = f", {p.active / 1e9:.2f}B active" if self.is_moe else ""
        return (f"{self.name}: {self.model_type}, {p.total / 1e9:.2f}B params{active}, "
                f"{self.num_layers} layers, {self.attention.kind.upper()} "
                f"{self.num_heads}q/{self.num_kv_heads}kv x {self.head_dim}")

    @classmethod
    def from_config(cls, config: dict[str, Any], *, name: str | None = None,
                    source: str = "dict") -> "ModelSpec":
        """Build a spec from a config.json dict (see :mod:`planner.models.hf_config`)."""
        from planner.models.hf_config import spec_from_config

        return spec_from_config(config, name=name, source=source)

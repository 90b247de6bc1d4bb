"""Activations kept for backward: the tensors autograd saves in one transformer layer.

Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", section 4.1)
count ``sbh(34 + 5as/h)`` bytes per layer for a GPT layer with 16-bit activations, 4h MLP and
dropout. Real models differ (GQA, gated MLPs, fp32 norm upcasts, no dropout, frozen weights), so this
module walks the layer op by op and records what each op saves, by storage, the way autograd does:

- a Linear saves its input only when its weight needs a gradient (PyTorch's generated
  ``MmBackward0`` guards the save with ``should_compute_output``); a frozen Linear saves nothing, a
  LoRA Linear saves the dropout mask and dropout output feeding ``lora_A`` (or the input when
  ``lora_dropout`` is 0) plus ``lora_A``'s rank-wide output;
- under autocast each Linear casts its fp32 input to 16 bits separately and saves its own copy;
- RMSNorm as written in transformers upcasts its input to fp32 and saves that copy and ``rsqrt``; the
  normalised tensor is saved only for a trainable norm weight; LayerNorm saves input, mean and rstd;
- flash / SDPA attention saves q, k, v, the output and a fp32 log-sum-exp per head; eager attention
  saves q, k and v (repeated to all heads for GQA) and the ``heads x seq`` softmax output (fp32), its
  16-bit cast, and the dropout mask and output when attention dropout is on;
- SiLU/GELU save their input, ``gelu_new`` (a Python tanh formula) three more intermediates, the gated
  product saves both factors; dropout saves a 1-byte mask on CUDA.

The counts reproduce ``torch.autograd.graph.saved_tensors_hooks`` byte for byte on transformers'
Llama, GPT-2 and BERT (``tests/test_training_activations_autograd.py``). Results are bytes per token
of one layer; :mod:`planner.memory.training.activation_memory` multiplies by tokens and layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from planner.memory.training.trainable import LinearMode
from planner.models.spec import ModelSpec, ParamGroup

Attention = Literal["flash", "eager"]
ATTENTION_IMPLS: tuple[str, ...] = ("flash", "eager")
# Extra F-sized tensors an activation function saves beyond its input (Python-formula GELUs).
_ACTIVATION_EXTRA = {"gelu_new": 3, "gelu_fast": 3, "quick_gelu": 1}
_NO_ROPE_TYPES = {"t5"}
POST_NORM_TYPES = ("bert", "bart")  # LayerNorm after each residual add (BERT; BART normalize_before=False)


@dataclass(frozen=True)
class ActivationSettings:
    """Dtypes and implementation facts that decide which tensors are saved, and how big they are."""

    residual_bytes: int
    matmul_bytes: int
    norm_fp32_input: bool
    attention: Attention = "flash"
    dropout_mask_bytes: int = 1
    lora_dropout: float = 0.0
    lora_dropout_per_module: bool = True
    quantized_base_saves_input: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    fused_qkv: bool = False
    fused_gelu: bool = False
    softmax_saves_input: bool = False


@dataclass(frozen=True)
class _T:
    """A tensor by storage: name, width per token, bytes per element."""

    name: str
    width: float
    nbytes: int

    @property
    def size(self) -> float:
        return self.width * self.nbytes


@dataclass
class _Tape:
    settings: ActivationSettings
    modes: Callable[[ParamGroup], LinearMode]
    lora_ranks: dict[str, int]
    norms_trainable: bool
    saved: dict[str, float] = field(default_factory=dict)

    def save(self, name: str, size: float) -> None:
        self.saved.setdefault(name, size)

    def keep(self, tensor: _T) -> None:
        self.save(tensor.name, tensor.size)

    def linear(self, group: ParamGroup | None, x: _T, out_width: float) -> _T:
        if group is None:
            return _T("missing", out_width, self.settings.matmul_bytes)
        mode = self.modes(group)
        m = self.settings.matmul_bytes
        if mode == "trainable":
            if x.nbytes != m:
                self.save(f"{group.name}.cast", m * x.width)
            else:
                self.keep(x)
        elif self.settings.quantized_base_saves_input:
            self.keep(x)
        if mode == "lora":
            self._lora(group, x)
        return _T(f"{group.name}.out", out_width, m)

    def _lora(self, group: ParamGroup, x: _T) -> None:
        s, m = self.settings, self.settings.matmul_bytes
        if s.lora_dropout > 0:
            key = group.name if s.lora_dropout_per_module else x.name
            self.save(f"lora_dropout_mask[{key}]", s.dropout_mask_bytes * x.width)
            self.save(f"lora_dropout_out[{key}]", m * x.width)
        elif x.nbytes != m:
            self.save(f"{group.name}.lora_cast", m * x.width)
        else:
            self.keep(x)
        self.save(f"{group.name}.lora_A_out", m * self.lora_ranks.get(group.name, 0))

    def norm(self, name: str, kind: str, x: _T) -> _T:
        if kind == "rmsnorm":
            upcast = self.settings.norm_fp32_input and x.nbytes != 4
            self.save(f"{name}.fp32_input" if upcast else x.name, 4 * x.width if upcast else x.size)
            self.save(f"{name}.rstd", 4)
            if self.norms_trainable:
                self.save(f"{name}.normed", x.size)
        else:
            self.keep(x)
            self.save(f"{name}.stats", 8)
        return _T(f"{name}.out", x.width, x.nbytes)

    def dropout(self, name: str, x: _T, p: float) -> None:
        if p > 0:
            self.save(f"{name}.mask", self.settings.dropout_mask_bytes * x.width)


def _groups_by_role(spec: ModelSpec) -> dict[str, ParamGroup]:
    """The dense attention and MLP Linear groups of the decoder layers, by role."""
    return {g.role: g for g in spec.linear_groups()
            if g.role and g.name.startswith("layers.") and g.component in ("attention", "mlp")}


def _attention(tape: _Tape, spec: ModelSpec, groups: dict[str, ParamGroup], x: _T, seq_len: int) -> _T:
    """Saves of the attention block for input ``x`` (the norm output); returns the o_proj output."""
    a, s = spec.attention, tape.settings
    m = s.matmul_bytes
    rope = spec.embeddings.learned_positions == 0 and spec.model_type not in _NO_ROPE_TYPES
    if a.mla is not None:
        return _mla_attention(tape, spec, groups, x)
    q_w, kv_w = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    if "qkv" in groups:
        fused = tape.linear(groups["qkv"], x, q_w + 2 * kv_w)
        q = _T("q_rope", q_w, m) if rope else fused
        k = _T("k_rope", kv_w, m) if rope else fused
        v = fused
    elif s.fused_qkv:  # one qkv Linear (LitGPT): views of its output, repeated copies for GQA
        for role in ("q", "k", "v"):
            tape.linear(groups.get(role), x, q_w if role == "q" else kv_w)
        fused = _T("qkv_fused", q_w + 2 * kv_w, m)
        gqa = kv_w != q_w
        q = _T("q_rope", q_w, m)
        k = _T("k_repeated", q_w, m) if gqa else (_T("k_rope", kv_w, m) if rope else fused)
        v = _T("v_repeated", q_w, m) if gqa else fused
    else:
        q_out = tape.linear(groups.get("q"), x, q_w)
        k_out = tape.linear(groups.get("k"), x, kv_w)
        v = tape.linear(groups.get("v"), x, kv_w)
        q = _T("q_rope", q_w, m) if rope else q_out
        k = _T("k_rope", kv_w, m) if rope else k_out
    if s.attention == "flash":
        for tensor in (q, k, v):
            tape.keep(tensor)
        out = _T("attn_out", q_w, m)
        tape.keep(out)
        tape.save("attn_lse", 4 * a.num_heads)
    else:
        heads_s = a.num_heads * seq_len
        tape.save("q_bmm", m * q_w)
        tape.save("k_bmm", m * q_w)
        tape.save("v_bmm", m * q_w)
        tape.save("softmax_out", (4 if m != 4 else m) * heads_s)
        if s.softmax_saves_input:  # PyTorch < 1.11: _softmax_backward_data(grad, result, dim, self)
            tape.save("softmax_in", 4 * heads_s)
        if s.attention_dropout > 0:
            tape.save("attn_dropout.mask", s.dropout_mask_bytes * heads_s)
            tape.save("attn_dropout.out", m * heads_s)
        elif m != 4:
            tape.save("softmax_cast", m * heads_s)
        out = _T("attn_out_merged", q_w, m)
    o = tape.linear(groups.get("o"), out, spec.hidden_size)
    tape.dropout("attn_resid_dropout", o, s.hidden_dropout)
    return o


def _mla_attention(tape: _Tape, spec: ModelSpec, groups: dict[str, ParamGroup], x: _T) -> _T:
    """DeepSeek MLA: latent projections, their norms, then attention over full per-head q/k/v."""
    mla, heads, m = spec.attention.mla, spec.attention.num_heads, tape.settings.matmul_bytes
    qk_w = heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
    v_w = heads * mla.v_head_dim
    if "q_a" in groups:
        q_lat = tape.linear(groups["q_a"], x, mla.q_lora_rank)
        tape.linear(groups["q_b"], tape.norm("q_a_norm", "rmsnorm", q_lat), qk_w)
    else:
        tape.linear(groups.get("q"), x, qk_w)
    kv_lat = tape.linear(groups.get("kv_a"), x, mla.kv_lora_rank + mla.qk_rope_head_dim)
    kv_in = tape.norm("kv_a_norm", "rmsnorm", _T(kv_lat.name, mla.kv_lora_rank, m))
    tape.linear(groups.get("kv_b"), kv_in, heads * (mla.qk_nope_head_dim + mla.v_head_dim))
    for name, width in (("q_full", qk_w), ("k_full", qk_w), ("v_full", v_w), ("attn_out", v_w)):
        tape.save(name, m * width)
    tape.save("attn_lse", 4 * heads)
    return tape.linear(groups.get("o"), _T("attn_out", v_w, m), spec.hidden_size)


def _mlp(tape: _Tape, spec: ModelSpec, groups: dict[str, ParamGroup], x: _T, width: int, tag: str) -> _T:
    """Saves of one (dense or expert) MLP on input ``x``; returns its output."""
    m, act = tape.settings.matmul_bytes, spec.mlp.activation
    extra = 0 if tape.settings.fused_gelu else _ACTIVATION_EXTRA.get(act, 0)
    if spec.mlp.gated:
        if "gate_up" in groups:
            gate = up = tape.linear(groups["gate_up"], x, 2 * width)
        else:
            gate = tape.linear(groups.get("gate"), x, width)
            up = tape.linear(groups.get("up"), x, width)
        tape.keep(gate)
        tape.keep(up)
        tape.save(f"{tag}.act_out", m * width)
        for i in range(extra):
            tape.save(f"{tag}.act_extra{i}", m * width)
        hidden = _T(f"{tag}.product", width, m)
    else:
        up = tape.linear(groups.get("up"), x, width)
        hidden = _T(f"{tag}.act_out", width, m)
        if act == "relu":
            tape.keep(hidden)
        else:
            tape.keep(up)
        for i in range(extra):
            tape.save(f"{tag}.act_extra{i}", m * width)
    out = tape.linear(groups.get("down"), hidden, spec.hidden_size)
    tape.dropout(f"{tag}.dropout", out, tape.settings.hidden_dropout)
    return out


def _moe(tape: _Tape, spec: ModelSpec, x: _T) -> _T:
    """Router + ``experts_per_token`` expert MLPs per token (+ shared experts)."""
    moe, m = spec.moe, tape.settings.matmul_bytes
    router = next((g for g in spec.linear_groups() if g.role == "router" and g.component == "router"), None)
    tape.linear(router, x, moe.num_experts)
    tape.save("router_probs", 4 * moe.num_experts)
    experts = {g.role: g for g in spec.linear_groups() if g.component == "experts"}
    k = moe.experts_per_token
    sub = _Tape(tape.settings, tape.modes, tape.lora_ranks, tape.norms_trainable)
    _mlp(sub, spec, experts, _T("expert_input", spec.hidden_size, x.nbytes), moe.expert_intermediate_size, "expert")
    for name, size in sub.saved.items():
        tape.save(f"experts.{name}", k * size)
    tape.save("expert_weighted", m * k * spec.hidden_size)
    shared = {g.role: g for g in spec.linear_groups() if g.component == "shared_experts" and g.role != "router"}
    if moe.shared_expert_intermediate_size:
        _mlp(tape, spec, shared, x, moe.shared_expert_intermediate_size, "shared_expert")
    return _T("moe_out", spec.hidden_size, m)


def layer_saved(spec: ModelSpec, settings: ActivationSettings, modes: Callable[[ParamGroup], LinearMode],
                *, seq_len: int, norms_trainable: bool, lora_ranks: dict[str, int] | None = None,
                moe_layer: bool = False) -> dict[str, float]:
    """Bytes per token that one decoder/encoder layer saves for backward, by tensor."""
    tape = _Tape(settings, modes, lora_ranks or {}, norms_trainable)
    groups = _groups_by_role(spec)
    r, h, kind = settings.residual_bytes, spec.hidden_size, spec.norm.kind
    x = _T("layer_input", h, r)
    if spec.model_type in POST_NORM_TYPES:  # post-norm: x is already normalised
        attn = _attention(tape, spec, groups, x, seq_len)
        y = tape.norm("attn_norm", kind, _T("attn_residual", h, r))
        del attn
        _mlp(tape, spec, groups, y, spec.mlp.intermediate_size, "mlp")
        tape.norm("mlp_norm", kind, _T("mlp_residual", h, r))
        return tape.saved
    y = tape.norm("input_norm", kind, x)
    attn = _attention(tape, spec, groups, y, seq_len)
    if spec.norm.per_layer == 4:
        tape.norm("post_attn_norm", kind, attn)
    if spec.parallel_attention:
        y2 = y if spec.norm.per_layer == 1 else tape.norm("mlp_norm", kind, x)
    else:
        y2 = tape.norm("post_attention_norm", kind, _T("attn_residual", h, r))
    out = _moe(tape, spec, y2) if moe_layer else _mlp(tape, spec, groups, y2, spec.mlp.intermediate_size, "mlp")
    if spec.norm.per_layer == 4:
        tape.norm("post_mlp_norm", kind, out)
    return tape.saved


EAGER_SCORE_GRADIENT_BYTES = 8  # two fp32 heads x s tensors per token at the softmax backward


def backward_workspace(spec: ModelSpec, settings: ActivationSettings, seq_len: int = 0) -> float:
    """Bytes per token of gradients alive while one layer runs backward (an estimate, not a count).

    The MLP backward holds the gradient of its output and of the intermediate product, then the two
    gradients of the gated product (``3 x F`` at the matmul dtype for a gated MLP, ``2 x F`` plain);
    flash-attention backward holds dq, dk, dv, d(out) and flash-attn 2's fp32 dq accumulator. Eager
    attention instead materialises gradients of the ``heads x s`` scores: the softmax runs in fp32
    (transformers' eager attention upcasts it; autocast runs softmax in fp32), and PyTorch's
    ``_softmax_backward_data(grad_output, output, ...)`` allocates the fp32 input gradient while the fp32
    output gradient is alive (tools/autograd/derivatives.yaml), so ``2 x 4 x heads x s`` bytes per token
    (``EAGER_SCORE_GRADIENT_BYTES``) on top of dq, dk, dv. The larger of MLP and attention, plus the
    gradient of the residual stream in and out (``2 x h``).
    """
    m, a = settings.matmul_bytes, spec.attention
    width = spec.moe.expert_intermediate_size * spec.moe.experts_per_token if spec.moe else spec.mlp.intermediate_size
    mlp = (3 if spec.mlp.gated else 2) * m * width
    q_w, kv_w = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    if settings.attention == "eager":
        attention = m * (2 * q_w + 2 * kv_w) + EAGER_SCORE_GRADIENT_BYTES * a.num_heads * seq_len
    else:
        attention = m * (2 * q_w + 2 * kv_w) + 4 * q_w
    return max(mlp, attention) + 2 * settings.residual_bytes * spec.hidden_size


def config_dropouts(spec: ModelSpec) -> tuple[float, float]:
    """(attention dropout, hidden dropout): the config.json keys each family uses, else its config-class
    default (``[dropout_defaults]`` in training.toml)."""
    from planner.memory.training.catalog import load_catalog

    config = spec.config
    defaults = load_catalog().dropout_defaults.for_model_type(spec.model_type)

    def first(keys: tuple[str, ...], default: float) -> float:
        for key in keys:
            if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool):
                return float(config[key])
        return default

    attention = first(("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "attn_dropout_prob",
                       "dropout_rate"), defaults[0])
    hidden = first(("hidden_dropout_prob", "resid_pdrop", "hidden_dropout", "dropout", "dropout_rate"), defaults[1])
    return attention, hidden

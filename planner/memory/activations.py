"""Inference activations: the tensors alive at each moment of the last layer of a prefill.

Counted from the transformers decoder-layer code (Llama/Qwen/Mistral family; the other families
have the same shape). For ``T`` prompt tokens of one sequence, hidden width ``d``, per-device MLP
width ``F`` (``F/tp``), per-device query width ``q`` and KV width ``kv``, activation bytes ``a``:

- *residual stream*: the model forward holds ``inputs_embeds``, the layer's input (its residual),
  the post-attention residual and the normed input of the block: up to 4 tensors of ``T x d``.
- *norm*: RMSNorm upcasts to fp32 (``hidden.to(float32)`` and ``hidden * rsqrt(var)`` alive
  together): 2 streams + 2 x ``T x d x 4``. LayerNorm is one fused kernel: 3 streams.
- *attention* (FlashAttention-2 / SDPA, O(T)): 3 streams + q, its RoPE copy and the two rotate-half
  temporaries (4 x ``T x q``) + k's RoPE temporaries (2 x ``T x kv``); the cache keeps k and v.
  Eager attention also materialises the scores: ``heads x T^2`` x (``a`` + 4 for the fp32 softmax)
  plus a ``T^2`` causal mask.
- *MLP*: ``down(act(gate(x)) * up(x))`` holds act(gate), up and their product at the multiply:
  4 streams + 3 x ``T x F`` (a non-gated MLP holds fc1's output and its activation: 2 x ``T x F``).
  Upper bound: the gate output may live until the statement ends (+1 x ``T x F``, +1 stream).
- *MoE* (transformers loop over experts): router logits (``E x (a + 4 + 4)``), top-k values and
  indices, the int64 one-hot expert mask (``k x E x 8``), the output accumulator (``d``), the routed
  tokens' expert intermediates (``3 x F_e`` for the ``k/E`` share of tokens; upper: every token on
  one expert) and a shared expert (``d + 3 x F_s``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.memory.parallel import kv_heads_per_device
from planner.models.spec import ModelSpec

SOURCE = ("transformers modeling_llama/qwen3/qwen3_moe (4.51) decoder layer, counted tensor by tensor; "
          "checked with a live-tensor tracker on a tiny Qwen3 generate() (3 x T x F alive at the MLP multiply)")


@dataclass(frozen=True)
class Moment:
    """Activation bytes alive at one moment, per sequence, as coefficients of T and T^2."""

    name: str
    per_token: float
    per_token_sq: float = 0.0
    upper_per_token: float | None = None
    formula: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)


def _dims(spec: ModelSpec, tp: int) -> dict[str, float]:
    a = spec.attention
    if a.mla is not None:
        q = a.num_heads * (a.mla.qk_nope_head_dim + a.mla.qk_rope_head_dim) / tp
        kv = float(a.mla.kv_lora_rank + a.mla.qk_rope_head_dim)
    else:
        q = a.num_heads * a.head_dim / tp
        kv = kv_heads_per_device(spec, tp) * a.head_dim
    return {"d": float(spec.hidden_size), "q": q, "kv": kv, "heads": a.num_heads / tp}


def prefill_moments(spec: ModelSpec, act_bytes: float, *, tp: int = 1, attention: str = "sdpa") -> list[Moment]:
    """The candidate peak moments of one prefill layer (bytes per prompt token of one sequence)."""
    dims = _dims(spec, tp)
    d, q, kv, a = dims["d"], dims["q"], dims["kv"], act_bytes
    moments = []
    if spec.norm.kind == "rmsnorm":
        moments.append(Moment("norm", 2 * d * a + 2 * d * 4, formula="T x d x (2 x a + 2 x 4)",
                              inputs={"d": int(d), "a": a}))
    else:
        moments.append(Moment("norm", 3 * d * a, formula="T x d x 3 x a", inputs={"d": int(d), "a": a}))
    attn = 3 * d * a + 4 * q * a + 2 * kv * a
    sq = 0.0
    if attention == "eager":
        sq = dims["heads"] * (a + 4) + a
    moments.append(Moment("attention", attn, sq,
                          formula="T x (3 x d + 4 x q + 2 x kv) x a" + (" + T^2 x (heads x (a + 4) + a)" if sq else ""),
                          inputs={"d": int(d), "q": q, "kv": kv, "a": a, "attention": attention,
                                  **({"heads": dims["heads"]} if sq else {})}))
    moe = spec.moe
    last = spec.num_layers - 1
    last_is_moe = moe is not None and last in set(moe.moe_layers)
    dense_f = spec.mlp.intermediate_size / tp
    factor = 3 if spec.mlp.gated else 2
    dense = Moment("mlp", 4 * d * a + factor * dense_f * a, upper_per_token=5 * d * a + (factor + 1) * dense_f * a,
                   formula=f"T x (4 x d + {factor} x F) x a", inputs={"d": int(d), "F": dense_f, "a": a})
    if last_is_moe:
        e, k, fe = moe.num_experts, moe.experts_per_token, moe.expert_intermediate_size / tp
        fs = moe.shared_expert_intermediate_size / tp
        router = e * (a + 4 + 4) + k * (4 + 8) + k * e * 8
        routed = (k / e) * (d * a + 3 * fe * a)
        shared = (d * a + 3 * fs * a) if fs else 0.0
        point = 4 * d * a + router + d * a + routed + shared
        upper = 5 * d * a + router + d * a + (d * a + 4 * fe * a) + shared
        moe_moment = Moment("moe", point, upper_per_token=max(upper, dense.upper_per_token or 0.0),
                            formula="T x (4 x d x a + E x (a + 8) + k x 12 + k x E x 8 + d x a + k/E x (d + 3 x F_e) x a"
                                    + (" + (d + 3 x F_s) x a" if fs else "") + ")",
                            inputs={"d": int(d), "E": e, "k": k, "F_e": fe, "F_s": fs, "a": a})
        moments.append(moe_moment)
    else:
        moments.append(dense)
    return moments


def decode_activation_bytes(moments: list[Moment]) -> float:
    """Activations of one decode step of one sequence: the largest prefill moment at T = 1."""
    return max(m.per_token + m.per_token_sq for m in moments)

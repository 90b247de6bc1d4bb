"""KV-cache memory: elements cached per token, by attention type, per device.

Per token and layer (vLLM ``page_size_bytes``, gguf-parser, hf-mem; SIZING.md "recommended defaults"):

- MHA/GQA/MQA: ``2 x kv_heads x head_dim`` (K and V); ``ceil(kv_heads / tp)`` heads per device.
- MLA (DeepSeek-V2 section 2.1), engines that cache the latent (vLLM, llama.cpp):
  ``kv_lora_rank + qk_rope_head_dim``, replicated on every tensor-parallel rank.
  transformers caches the decompressed per-head keys and values instead:
  ``heads x (qk_nope + qk_rope) + heads x v_head_dim``.
- Sliding-window layers (Mistral, Gemma 2/3, gpt-oss ``layer_types``) hold at most ``window`` tokens.
- Encoder-decoder decoders add cross-attention K/V of the encoder input once per layer.
Bytes = elements x the KV dtype's bytes per element.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.formats import get_kv_dtype
from planner.memory.parallel import kv_heads_per_device
from planner.models.spec import ModelSpec


@dataclass(frozen=True)
class KVLayout:
    """KV elements per token summed over layers (per device), split by how layers cap tokens."""

    full_per_token: float
    sliding_per_token: float
    window: int | None
    per_layer_max: float
    cross_per_prompt_token: float
    kind: str

    @property
    def per_token(self) -> float:
        return self.full_per_token + self.sliding_per_token


def _layer_elements(spec: ModelSpec, tp: int, latent_mla: bool) -> tuple[float, str]:
    a = spec.attention
    if a.mla is not None:
        if latent_mla:
            return float(a.mla.kv_lora_rank + a.mla.qk_rope_head_dim), "mla-latent"
        heads = a.num_heads / tp
        return heads * (a.mla.qk_nope_head_dim + a.mla.qk_rope_head_dim) + heads * a.mla.v_head_dim, "mla-decompressed"
    return 2.0 * kv_heads_per_device(spec, tp) * a.head_dim, a.kind


def kv_layout(spec: ModelSpec, *, tp: int = 1, latent_mla: bool = True) -> KVLayout:
    """Elements cached per token for ``spec`` on one of ``tp`` tensor-parallel devices."""
    if spec.architecture == "encoder":
        return KVLayout(0.0, 0.0, None, 0.0, 0.0, "none")
    per_layer, kind = _layer_elements(spec, tp, latent_mla)
    sliding = spec.attention.num_sliding_layers if spec.attention.sliding_window else 0
    full = spec.num_layers - sliding
    cross = 0.0
    if spec.architecture == "encoder-decoder":
        cross = spec.num_layers * per_layer
    return KVLayout(full_per_token=full * per_layer, sliding_per_token=sliding * per_layer,
                    window=spec.attention.sliding_window if sliding else None, per_layer_max=per_layer,
                    cross_per_prompt_token=cross, kind=kind)


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str = "bf16", *, tp: int = 1, latent_mla: bool = True) -> float:
    """KV bytes one token adds on one device, all layers, ignoring sliding-window caps.

    >>> # Llama-3.1-8B: 32 layers x 2 x 8 kv heads x 128 x 2 bytes = 131,072
    """
    layout = kv_layout(spec, tp=tp, latent_mla=latent_mla)
    return layout.per_token * get_kv_dtype(kv_dtype).bytes_per_element


def kv_cache_bytes(spec: ModelSpec, *, tokens: int, batch: int = 1, kv_dtype: str = "bf16", tp: int = 1,
                   latent_mla: bool = True) -> float:
    """KV bytes of ``batch`` sequences of ``tokens`` tokens on one device (window caps applied)."""
    layout = kv_layout(spec, tp=tp, latent_mla=latent_mla)
    capped = tokens if layout.window is None else min(tokens, layout.window)
    elements = layout.full_per_token * tokens + layout.sliding_per_token * capped
    return batch * elements * get_kv_dtype(kv_dtype).bytes_per_element

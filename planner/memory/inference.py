"""Assemble the inference terms and phases of one run, per engine.

Phases (moments of the run; the peak is the largest, see ``planner.memory.phases``):

- ``load``: weights, plus bitsandbytes' quantize-on-load transient;
- ``prefill:<moment>``: the last layer of the prefill (norm, attention, mlp/moe) and its lm_head,
  with the KV cache of every layer (``hf``: grown to the prompt; ``litgpt``: allocated for
  prompt + new tokens up front);
- ``decode``: the last generation step: the KV cache of all tokens, one layer's ``torch.cat`` copy
  (``hf``), logits and sampler scores; blocks freed after the prefill bound the allocator reserve;
- ``serving`` (``vllm``, ``llamacpp``): weights + a fixed activation/compute reserve + the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.formats import KVDtype, WeightFormat, dtype_bytes
from planner.memory import activations as act
from planner.memory import logits as lg
from planner.memory.constants import constant
from planner.memory.engines import EngineProfile
from planner.memory.kv_cache import kv_layout
from planner.memory.overhead import (
    allocator_slack_term,
    cublas_workspace_term,
    cuda_context_term,
    cudagraph_term,
    nccl_term,
)
from planner.memory.parallel import layer_fraction
from planner.memory.phases import Coeffs, PhaseSpec, RawTerm
from planner.memory.weights import WeightBytes, weight_bytes
from planner.models.spec import ModelSpec

KV_SOURCE = "vLLM kv_cache_interface page_size_bytes = 2 x block x kv_heads x head_size x dtype; MLA latent (DeepSeek-V2 2.1); sliding-window caps (hf-mem kv_cache.py)"
_DECODE_TEXT = "last decode step: KV cache of every token, logits and sampler scores"


@dataclass(frozen=True)
class InferenceSetup:
    """Everything an inference estimate depends on, validated (built by planner.memory.api)."""

    spec: ModelSpec
    fmt: WeightFormat
    engine: EngineProfile
    kv: KVDtype
    tp: int = 1
    pp: int = 1
    attention: str = "sdpa"
    logits: str = "last"
    hf_cache: str = "dynamic"
    cache_len: int | None = None
    module_loading: str = "lazy"
    compute_capability: tuple[int, int] | None = None
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    n_ubatch: int = 512
    flash_attn: bool = True
    prefill_chunk_size: int | None = None


@dataclass(frozen=True)
class InferencePlan:
    terms: list[RawTerm]
    phases: list[PhaseSpec]
    window: int | None
    weights: WeightBytes
    kv_bytes_per_token: float
    kv_coeffs: Coeffs
    safe_divisor: float = 1.0
    sums: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] | None = None

    def phase_coefficients(self) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
        """Per phase: (device-level upper coefficients, allocated point coefficients)."""
        return self.sums if self.sums is not None else phase_sums(self.terms, self.phases)


def _weights_terms(w: WeightBytes, fmt: WeightFormat, everywhere: frozenset[str], pp: int) -> list[RawTerm]:
    split = f" (most loaded of {pp} pipeline stages)" if pp > 1 else ""
    terms = []
    if w.quantized:
        terms.append(RawTerm("weights_quantized", f"weights stored as {fmt.name}{split}", Coeffs(const=w.quantized),
                             formula="sum over quantized tensors of N x bits/8 + scales + metadata (formats.toml)",
                             source=fmt.source, phases=everywhere, inputs={"format": fmt.name}))
    if w.unquantized:
        dtype = fmt.name if fmt.family == "float" else fmt.unquantized_dtype_resolved
        label = f"weights in {dtype}" if fmt.family == "float" else f"unquantized weights ({dtype}: embeddings, norms, ...)"
        if w.separate_lm_head:
            label += ", incl. a separate lm_head copy"
        kept = ", ".join(fmt.keep_unquantized) or "nothing"
        source = (f"{fmt.name} stores every weight in {dtype}" if fmt.family == "float" else
                  f"formats.toml: {fmt.name} keeps {kept} unquantized, in {dtype}")
        terms.append(RawTerm("weights_unquantized", label + split, Coeffs(const=w.unquantized),
                             formula="params x bytes per element", source=source, phases=everywhere,
                             inputs={"dtype": dtype}))
    return terms


_PLAN_CACHE: dict[tuple, tuple[ModelSpec, InferencePlan]] = {}
_PLAN_CACHE_SIZE = 4096


def build_inference_plan(setup: InferenceSetup) -> InferencePlan:
    """The terms and phases of one inference run (per device); cached, as plans do not depend on
    batch or tokens (those are applied when a plan is evaluated)."""
    key = (id(setup.spec), setup.fmt.name, setup.engine.name, setup.kv.name, setup.tp, setup.pp, setup.attention,
           setup.logits, setup.hf_cache, setup.cache_len, setup.module_loading, setup.compute_capability,
           setup.gpu_memory_utilization, setup.max_num_batched_tokens, setup.max_num_seqs, setup.n_ubatch,
           setup.flash_attn, setup.prefill_chunk_size)
    hit = _PLAN_CACHE.get(key)
    if hit is not None and hit[0] is setup.spec:
        return hit[1]
    if setup.engine.name == "vllm":
        plan = _vllm_plan(setup)
    elif setup.engine.name == "llamacpp":
        plan = _llamacpp_plan(setup)
    else:
        plan = _generate_plan(setup)
    if len(_PLAN_CACHE) >= _PLAN_CACHE_SIZE:
        _PLAN_CACHE.pop(next(iter(_PLAN_CACHE)))
    _PLAN_CACHE[key] = (setup.spec, plan)
    return plan


def _kv_coeffs(setup: InferenceSetup, latent_mla: bool) -> tuple[Coeffs, float, object]:
    layout = kv_layout(setup.spec, tp=setup.tp, latent_mla=latent_mla)
    share = layer_fraction(setup.spec, setup.pp)
    per_elem = setup.kv.bytes_per_element
    coeffs = Coeffs(per_token=layout.full_per_token * per_elem * share,
                    per_window_token=layout.sliding_per_token * per_elem * share)
    return coeffs, layout.per_token * per_elem * share, layout


def _kv_label(setup: InferenceSetup, layout, tokens: str) -> str:
    window = f", sliding layers capped at {layout.window}" if layout.window else ""
    return f"KV cache ({setup.kv.name}, {layout.kind}, {tokens} tokens{window})"


@dataclass(frozen=True)
class _SharedPart:
    """The format-independent part of a generate() plan (shared by every format of one compute dtype)."""

    terms: tuple[RawTerm, ...]
    phases: tuple[PhaseSpec, ...]
    window: int | None
    kv: Coeffs
    kv_per_token: float
    prefill: frozenset[str]
    everywhere: frozenset[str]
    sums: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]


_SHARED_CACHE: dict[tuple, tuple[ModelSpec, _SharedPart]] = {}


def phase_sums(terms: list[RawTerm] | tuple[RawTerm, ...], phases: list[PhaseSpec] | tuple[PhaseSpec, ...]
               ) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per phase: (sum of every term's upper coefficients, sum of the allocated terms' point coefficients)."""
    upper = {p.name: [0.0] * 5 for p in phases}
    point = {p.name: [0.0] * 5 for p in phases}
    for term in terms:
        u = term.upper_coeffs.as_tuple()
        c = term.point.as_tuple() if term.counted_in == "allocated" else None
        for name in term.phases:
            if name not in upper:
                continue
            acc = upper[name]
            acc[0] += u[0]; acc[1] += u[1]; acc[2] += u[2]; acc[3] += u[3]; acc[4] += u[4]  # noqa: E702
            if c is not None:
                acc = point[name]
                acc[0] += c[0]; acc[1] += c[1]; acc[2] += c[2]; acc[3] += c[3]; acc[4] += c[4]  # noqa: E702
    return {name: (tuple(upper[name]), tuple(point[name])) for name in upper}


def _add_sums(base: dict, extra: dict) -> dict:
    out = {}
    for name, (upper, point) in base.items():
        eu, ep = extra[name]
        out[name] = ((upper[0] + eu[0], upper[1] + eu[1], upper[2] + eu[2], upper[3] + eu[3], upper[4] + eu[4]),
                     (point[0] + ep[0], point[1] + ep[1], point[2] + ep[2], point[3] + ep[3], point[4] + ep[4]))
    return out


def _generate_plan(setup: InferenceSetup) -> InferencePlan:
    """transformers generate() and LitGPT generate: prefill moments, then decode steps."""
    spec, fmt, engine = setup.spec, setup.fmt, setup.engine
    a = dtype_bytes(fmt.compute_dtype)
    shared = _shared_generate_part(setup, a)
    w = weight_bytes(spec, fmt, engine=engine, tp=setup.tp, pp=setup.pp)
    prefill, everywhere = shared.prefill, shared.everywhere
    own = _weights_terms(w, fmt, everywhere, setup.pp)
    if fmt.load_transient_bytes_per_param and w.largest_quantized_tensor_params:
        transient = fmt.load_transient_bytes_per_param * w.largest_quantized_tensor_params
        own.append(RawTerm("activations", "quantize-on-load copy of the largest tensor", Coeffs(const=transient),
                           formula="bytes/param x params of the largest quantized tensor",
                           source=fmt.load_transient_source, phases=frozenset({"load"}),
                           inputs={"bytes_per_param": fmt.load_transient_bytes_per_param,
                                   "params": w.largest_quantized_tensor_params}))
    if fmt.prefill_dequantizes and w.largest_quantized_tensor_params:
        dequant = w.largest_quantized_tensor_params * a / setup.tp
        point = Coeffs(const=dequant) if fmt.prefill_dequantizes == "point" else Coeffs()
        own.append(RawTerm("activations", "16-bit dequantized copy of the largest quantized weight", point,
                           upper=Coeffs(const=dequant), formula="params of the largest quantized tensor x a",
                           source=fmt.prefill_dequant_source, phases=prefill,
                           inputs={"params": w.largest_quantized_tensor_params, "a": a}))
    slack = allocator_slack_term(w.allocator_waste, everywhere)
    terms = own + list(shared.terms) + [slack]
    sums = _add_sums(shared.sums, phase_sums(own + [slack], shared.phases))
    return InferencePlan(terms, list(shared.phases), shared.window, w, shared.kv_per_token, shared.kv, sums=sums)


def _shared_generate_part(setup: InferenceSetup, a: float) -> _SharedPart:
    key = (id(setup.spec), a, setup.engine.name, setup.kv.name, setup.tp, setup.pp, setup.attention, setup.logits,
           setup.hf_cache, setup.cache_len, setup.module_loading, setup.compute_capability, setup.prefill_chunk_size)
    hit = _SHARED_CACHE.get(key)
    if hit is not None and hit[0] is setup.spec:
        return hit[1]
    part = _build_shared_generate_part(setup, a)
    if len(_SHARED_CACHE) >= _PLAN_CACHE_SIZE:
        _SHARED_CACHE.pop(next(iter(_SHARED_CACHE)))
    _SHARED_CACHE[key] = (setup.spec, part)
    return part


def _build_shared_generate_part(setup: InferenceSetup, a: float) -> _SharedPart:
    spec, engine = setup.spec, setup.engine
    moments = act.prefill_moments(spec, a, tp=setup.tp, attention=setup.attention)
    encoder_only = spec.architecture == "encoder"
    prefill_names = [f"prefill:{m.name}" for m in moments] + ([] if encoder_only else ["prefill:lm_head"])
    phases = [PhaseSpec("load", "weights loaded (quantize-on-load transients included)")]
    phases += [PhaseSpec(name, f"last prefill layer, {name.split(':')[1]}") for name in prefill_names]
    if not encoder_only:
        phases.append(PhaseSpec("decode", _DECODE_TEXT))
    everywhere = frozenset(p.name for p in phases)
    running = everywhere - {"load"}
    prefill = frozenset(prefill_names)
    terms: list[RawTerm] = []

    kv, kv_per_token, layout = _kv_coeffs(setup, latent_mla=False)
    static = setup.hf_cache == "static"
    if not encoder_only and static:
        terms.append(_static_cache_term(setup, layout, kv, kv_per_token, running))
    if not encoder_only and not static:
        preallocated = engine.kv_cache == "preallocated"
        kv_formula = "tokens x batch x layers x per-layer elements x bytes/element"
        terms.append(RawTerm("kv_cache", _kv_label(setup, layout, "prompt+new" if preallocated else "prompt"), kv,
                             formula=kv_formula, source=KV_SOURCE, phases=prefill,
                             tokens="total" if preallocated else "prompt",
                             inputs={"bytes_per_token": kv_per_token}))
        terms.append(RawTerm("kv_cache", _kv_label(setup, layout, "prompt+new"), kv, formula=kv_formula,
                             source=KV_SOURCE, phases=frozenset({"decode"}), tokens="total",
                             inputs={"bytes_per_token": kv_per_token}))
        if engine.kv_cache == "dynamic" and setup.hf_cache == "legacy":
            terms.append(RawTerm("kv_cache", "previous step's past_key_values (legacy tuple cache)", kv,
                                 formula="the whole cache again: tokens x batch x per-token bytes",
                                 source="transformers < 4.36 and remote-code models (e.g. Qwen-1) return a new "
                                        "tuple of torch.cat-grown K/V per layer while generate() still holds the "
                                        "previous step's tuple, so two caches are alive at the end of each step",
                                 phases=frozenset({"decode"}), tokens="total"))
        elif engine.kv_cache == "dynamic":
            one = layout.per_layer_max / 2 * setup.kv.bytes_per_element
            terms.append(RawTerm("kv_cache", "torch.cat copy of one layer's K (DynamicCache growth)",
                                 Coeffs(per_token=one), formula="tokens x batch x per-layer K elements x bytes",
                                 source="transformers DynamicCache.update: torch.cat allocates the grown tensor "
                                        "while the old one is alive", phases=frozenset({"decode"}), tokens="total"))
        if layout.cross_per_prompt_token:
            cross = layout.cross_per_prompt_token * setup.kv.bytes_per_element
            terms.append(RawTerm("kv_cache", "cross-attention K/V of the encoder input", Coeffs(per_token=cross),
                                 formula="encoder tokens x layers x 2 x heads x d_kv x bytes", source=KV_SOURCE,
                                 phases=frozenset({"decode"}), tokens="prompt"))

    chunk = setup.prefill_chunk_size
    for moment in moments:
        point = Coeffs(per_token=moment.per_token, per_token_sq=moment.per_token_sq)
        upper = Coeffs(per_token=moment.upper_per_token or moment.per_token, per_token_sq=moment.per_token_sq)
        if chunk:
            point = Coeffs(per_seq=point.per_token * chunk + point.per_token_sq * chunk * chunk)
            upper = Coeffs(per_seq=upper.per_token * chunk + upper.per_token_sq * chunk * chunk)
        label = f"prefill activations at the {moment.name}" + (f" (chunks of {chunk})" if chunk else "")
        terms.append(RawTerm("activations", label, point, formula=moment.formula, source=act.SOURCE,
                             phases=frozenset({f"prefill:{moment.name}"}), tokens="prompt", upper=upper,
                             inputs=moment.inputs))

    if not encoder_only:
        head = lg.prefill_logits(spec.vocab_size, a, mode=setup.logits, fp32_copy=engine.logits_fp32_copy)
        terms.append(RawTerm("activations", "final hidden states entering lm_head",
                             Coeffs(per_token=spec.hidden_size * a), formula="T x d x a", source=act.SOURCE,
                             phases=frozenset({"prefill:lm_head"}), tokens="prompt"))
        terms.append(RawTerm("logits", f"prefill logits ({setup.logits})", head,
                             formula=("T x vocab" if setup.logits == "full" else "vocab")
                             + f" x ({a:g}" + (" + 4 fp32 copy)" if engine.logits_fp32_copy else ")"),
                             source=lg.SOURCE, phases=frozenset({"prefill:lm_head"}), tokens="prompt",
                             inputs={"vocab": spec.vocab_size, "mode": setup.logits}))
        terms.append(RawTerm("logits", "decode logits and sampler scores",
                             lg.decode_logits(spec.vocab_size, a, fp32_copy=engine.logits_fp32_copy),
                             formula="vocab x (a + 4 + 4)", source=lg.SOURCE, phases=frozenset({"decode"}),
                             inputs={"vocab": spec.vocab_size}))
        terms.append(RawTerm("activations", "decode-step activations",
                             Coeffs(per_seq=act.decode_activation_bytes(moments)),
                             formula="largest prefill moment at T = 1", source=act.SOURCE,
                             phases=frozenset({"decode"})))
    if engine.kv_cache == "preallocated" and engine.name == "litgpt" and not encoder_only:
        terms.append(RawTerm("activations", "LitGPT causal mask cache (bool, max_seq_length^2)",
                             Coeffs(per_token_sq=1.0), formula="(prompt + new)^2 x 1 byte",
                             source=engine.source, phases=running, tokens="total"))
    terms += _runtime_terms(setup, running, everywhere)
    return _SharedPart(tuple(terms), tuple(phases), layout.window, kv, kv_per_token, prefill, everywhere,
                       phase_sums(terms, phases))


STATIC_CACHE_SOURCE = ("transformers StaticCache (cache_implementation='static'): K/V tensors of shape (batch, kv_heads, "
                       "max_cache_len, head_dim) per layer allocated before the prefill, max_cache_len = prompt + "
                       "max_new_tokens by default; AutoAWQ from_quantized(fuse_layers=True, max_seq_len=2048, "
                       "batch_size=1): awq/modules/fused/cache.py WindowedCache allocates fp16 K/V for batch_size x "
                       "max_seq_len per layer when the model is fused")


def _static_cache_term(setup: InferenceSetup, layout, kv: Coeffs, kv_per_token: float,
                       running: frozenset[str]) -> RawTerm:
    """A cache allocated up front: ``cache_len`` tokens per sequence (or prompt + new when not given)."""
    label = _kv_label(setup, layout, f"{setup.cache_len:,} pre-allocated" if setup.cache_len
                      else "prompt+new pre-allocated")
    if setup.cache_len:
        coeffs = Coeffs(per_seq=kv.per_token * setup.cache_len + kv.per_window_token * min(
            setup.cache_len, layout.window or setup.cache_len))
        return RawTerm("kv_cache", label, coeffs, formula="cache_len x batch x per-token bytes",
                       source=STATIC_CACHE_SOURCE, phases=running,
                       inputs={"bytes_per_token": kv_per_token, "cache_len": setup.cache_len})
    return RawTerm("kv_cache", label, kv, formula="(prompt + new) x batch x per-token bytes", source=STATIC_CACHE_SOURCE,
                   phases=running, tokens="total", inputs={"bytes_per_token": kv_per_token})


def _runtime_terms(setup: InferenceSetup, running: frozenset[str], everywhere: frozenset[str]) -> list[RawTerm]:
    terms = [cuda_context_term(setup.engine, everywhere, module_loading=setup.module_loading)]
    if setup.engine.cublas_workspace:
        terms.append(cublas_workspace_term(setup.compute_capability, running))
    uses_nccl = setup.tp > 1 or (setup.pp > 1 and setup.engine.name == "vllm")
    nccl = nccl_term(max(setup.tp, setup.pp), everywhere) if uses_nccl else None
    if nccl is not None:
        terms.append(nccl)
    return terms


def _vllm_plan(setup: InferenceSetup) -> InferencePlan:
    spec, fmt = setup.spec, setup.fmt
    a = dtype_bytes(fmt.compute_dtype)
    w = weight_bytes(spec, fmt, engine=setup.engine, tp=setup.tp, pp=setup.pp)
    phases = [PhaseSpec("serving", "weights + profiled activation reserve + KV pool")]
    everywhere = frozenset({"serving"})
    terms = _weights_terms(w, fmt, everywhere, setup.pp)
    moments = act.prefill_moments(spec, a, tp=setup.tp, attention="flash")
    m = setup.max_num_batched_tokens
    peak = max(moments, key=lambda x: x.per_token)
    sampler = setup.max_num_seqs * spec.vocab_size * (a + 4 + 4)
    terms.append(RawTerm("activations", f"activation reserve (profile_run of {m} tokens, {peak.name} peak)",
                         Coeffs(const=m * peak.per_token),
                         upper=Coeffs(const=m * (peak.upper_per_token or peak.per_token)),
                         formula="max_num_batched_tokens x per-token peak moment", source=act.SOURCE,
                         phases=everywhere, inputs={"max_num_batched_tokens": m, **peak.inputs}))
    terms.append(RawTerm("logits", f"sampler logits of the profile run ({setup.max_num_seqs} sequences)",
                         Coeffs(const=sampler), formula="max_num_seqs x vocab x (a + 4 + 4)", source=lg.SOURCE,
                         phases=everywhere, inputs={"max_num_seqs": setup.max_num_seqs}))
    kv, kv_per_token, layout = _kv_coeffs(setup, latent_mla=True)
    block = int(constant("vllm_block_size").value)
    terms.append(RawTerm("kv_cache", _kv_label(setup, layout, "prompt+new") + f", {block}-token pages", kv,
                         upper=kv + Coeffs(per_seq=(block - 1) * kv_per_token),
                         formula="tokens x batch x per-token bytes (pages of 16: up to 15 tokens more)",
                         source=KV_SOURCE, phases=everywhere, tokens="total",
                         inputs={"bytes_per_token": kv_per_token}))
    terms += _runtime_terms(setup, everywhere, everywhere)
    terms.append(cudagraph_term(everywhere))
    terms.append(allocator_slack_term(w.allocator_waste, everywhere))
    return InferencePlan(terms, phases, layout.window, w, kv_per_token, kv, safe_divisor=setup.gpu_memory_utilization)


def _llamacpp_plan(setup: InferenceSetup) -> InferencePlan:
    spec, fmt = setup.spec, setup.fmt
    w = weight_bytes(spec, fmt, engine=setup.engine, tp=setup.tp, pp=setup.pp)
    phases = [PhaseSpec("serving", "weights + KV cache for n_ctx + compute buffer")]
    everywhere = frozenset({"serving"})
    terms = _weights_terms(w, fmt, everywhere, setup.pp)
    kv, kv_per_token, layout = _kv_coeffs(setup, latent_mla=True)
    pad = int(constant("llamacpp_ctx_padding").value)
    window = layout.window + setup.n_ubatch if layout.window else None
    terms.append(RawTerm("kv_cache", _kv_label(setup, layout, "n_ctx") + f", padded to {pad}", kv,
                         upper=kv + Coeffs(per_seq=(pad - 1) * kv_per_token),
                         formula="n_ctx x n_parallel x per-token bytes", source=setup.engine.source,
                         phases=everywhere, tokens="total", inputs={"bytes_per_token": kv_per_token}))
    moments = act.prefill_moments(spec, 4.0, tp=setup.tp, attention="flash")
    per_token = max(m.per_token for m in moments)
    ub = setup.n_ubatch
    scores = Coeffs() if setup.flash_attn else Coeffs(per_token=2 * ub * spec.num_heads / setup.tp * 4)
    terms.append(RawTerm("activations", f"compute buffer (n_ubatch {ub}, f32 activations"
                                        + (", flash attention)" if setup.flash_attn else ", KQ scores)"),
                         Coeffs(const=ub * per_token) + scores,
                         formula="n_ubatch x per-token peak moment (f32)" + ("" if setup.flash_attn else
                                                                             " + 2 x n_ubatch x heads x n_kv x 4"),
                         source="gguf-parser-go file_estimate__llamacpp.go computation buffer; ggml-alloc reuses it per layer",
                         phases=everywhere, tokens="total", inputs={"n_ubatch": ub}))
    terms += _runtime_terms(setup, everywhere, everywhere)
    return InferencePlan(terms, phases, window, w, kv_per_token, kv)

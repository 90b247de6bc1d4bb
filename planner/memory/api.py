"""``planner.estimate_memory``: one entry point for inference and (via ``mode``) training estimates.

Inference requests are validated here (sizes, token counts, engine options, format and GPU
support), turned into an :class:`~planner.memory.inference.InferenceSetup`, and the phase totals of
its plan become a :class:`~planner.memory.result.MemoryEstimate` for the peak phase.
Training modes are delegated to ``planner.memory.training.estimate_training_memory``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.errors import InvalidRequestError, UnsupportedError
from planner.formats import KVDtype, WeightFormat, get_format, get_kv_dtype
from planner.memory.constants import constant
from planner.memory.devices import fits_on, format_support, kv_dtype_support, resolve_gpu
from planner.memory.engines import EngineProfile, get_engine, hf_version_defaults
from planner.memory.inference import InferencePlan, InferenceSetup, build_inference_plan
from planner.memory.parallel import require_tensor_parallel
from planner.memory.phases import PhaseTotals, peak_phase, phase_totals, safe_bytes, to_memory_terms
from planner.memory.result import GIB, GpuFit, KVPool, MemoryEstimate, sum_terms
from planner.models.resolve import get_model
from planner.models.spec import ModelSpec

DEFAULT_SEQ_LEN = 4096
MAX_TOKENS = 10_000_000
MAX_BATCH = 1_000_000
MAX_GPUS = 4096
INFERENCE_MODES = ("inference",)


class InferenceOptions(BaseModel):
    """Engine options of an inference estimate (all optional; defaults recorded in assumptions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hf_logits: Literal["last", "full"] | None = Field(
        None, description="'last' (transformers >= ~4.45) or 'full' (<= 4.44: fp32 logits for the whole prompt)")
    hf_cache: Literal["dynamic", "legacy", "static"] | None = Field(
        None, description="transformers >= 4.36 DynamicCache (default), 'legacy' tuple caches (older versions, "
                          "remote-code models) that keep the previous step's cache alive, or 'static': a cache "
                          "allocated up front for cache_len tokens x batch (cache_implementation='static', "
                          "AutoAWQ fused modules)")
    cache_len: int | None = Field(
        None, gt=0, description="tokens per sequence a static cache holds: transformers StaticCache max_cache_len "
                                "(default prompt + new tokens); AutoAWQ from_quantized(fuse_layers=True, "
                                "max_seq_len=2048) allocates max_seq_len")
    transformers_version: str | None = Field(
        None, description="the transformers release generate() runs on, e.g. '4.38': older releases imply "
                          "hf_cache='legacy' (< 4.36) and hf_logits='full' (< 4.45), engines.toml [[hf_versions]]")
    attention: Literal["flash", "sdpa", "eager"] = Field("sdpa", description="attention kernel (eager holds T^2 scores)")
    parallel: Literal["tensor", "pipeline"] | None = Field(None, description="how gpus > 1 split the model")
    cuda_module_loading: Literal["lazy", "eager"] = "lazy"
    prefill_chunk_size: int | None = Field(None, gt=0, description="transformers generation_config.prefill_chunk_size")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="vLLM")
    max_num_batched_tokens: int | None = Field(None, gt=0, description="vLLM")
    max_num_seqs: int | None = Field(None, gt=0, description="vLLM")
    n_ubatch: int | None = Field(None, gt=0, description="llama.cpp physical batch")
    flash_attn: bool = Field(True, description="llama.cpp -fa")


@dataclass(frozen=True)
class TokenPlan:
    prompt: int
    new: int
    note: str

    @property
    def total(self) -> int:
        return self.prompt + self.new


def _positive_int(name: str, value: Any, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}.")
    if value < 1:
        raise InvalidRequestError(f"{name} must be at least 1, got {value}.")
    if value > maximum:
        raise InvalidRequestError(f"{name} = {value:,} is absurdly large (the limit is {maximum:,}).")
    return value


def resolve_tokens(seq_len: int | None, prompt_len: int | None, new_tokens: int | None) -> TokenPlan:
    """Prompt and generated tokens from the three ways a user can give them."""
    if prompt_len is None and new_tokens is None:
        if seq_len is None:
            return TokenPlan(DEFAULT_SEQ_LEN, 0, f"seq_len not given: {DEFAULT_SEQ_LEN} tokens, processed as one prompt")
        total = _positive_int("seq_len", seq_len, MAX_TOKENS)
        return TokenPlan(total, 0, "seq_len tokens processed as one prompt (the worst case for the prefill peak)")
    if prompt_len is None:
        raise InvalidRequestError("new_tokens needs prompt_len (the tokens of the prompt) as well.")
    prompt = _positive_int("prompt_len", prompt_len, MAX_TOKENS)
    new = 0 if new_tokens is None else new_tokens
    if isinstance(new, bool) or not isinstance(new, int) or new < 0:
        raise InvalidRequestError(f"new_tokens must be a whole number >= 0, got {new_tokens!r}.")
    if seq_len is not None and seq_len != prompt + new:
        raise InvalidRequestError(f"seq_len ({seq_len}) must equal prompt_len + new_tokens ({prompt + new}); "
                                  "give either seq_len or prompt_len/new_tokens.")
    _positive_int("prompt_len + new_tokens", prompt + new, MAX_TOKENS)
    return TokenPlan(prompt, new, "prompt_len and new_tokens as given")


def default_kv_dtype(fmt: WeightFormat, engine: EngineProfile) -> str:
    """The KV dtype an engine uses without a flag: the activation dtype (fp16 for llama.cpp)."""
    if engine.name == "llamacpp":
        return "fp16"
    return fmt.compute_dtype


@dataclass(frozen=True)
class PreparedInference:
    """A validated inference request and its plan (what estimate_memory and what_fits share)."""

    setup: InferenceSetup
    plan: InferencePlan
    tokens: TokenPlan
    batch: int
    gpu: Any
    assumptions: dict[str, Any]
    warnings: tuple[str, ...]


def prepare_inference(model: Any, precision: str | WeightFormat = "bf16", *, batch: int = 1,
                      seq_len: int | None = None, prompt_len: int | None = None, new_tokens: int | None = None,
                      engine: str = "hf", gpus: int = 1, kv_dtype: str | KVDtype | None = None, gpu: Any = None,
                      check_support: bool = True, split: tuple[int, int] | None = None,
                      **options: Any) -> PreparedInference:
    """Validate an inference request and build its plan (raises FitplanError subclasses).

    ``split=(tp, pp)`` sets tensor and pipeline sizes together (cluster sizing); otherwise ``gpus``
    is split the engine's way (or ``parallel=``).
    """
    spec: ModelSpec = get_model(model)
    fmt = get_format(precision)
    profile = get_engine(engine)
    batch = _positive_int("batch", batch, MAX_BATCH)
    gpus = _positive_int("gpus", gpus, MAX_GPUS)
    tokens = resolve_tokens(seq_len, prompt_len, new_tokens)
    try:
        opts = InferenceOptions(**options)
    except ValidationError as error:
        allowed = ", ".join(InferenceOptions.model_fields)
        first = error.errors()[0]
        raise InvalidRequestError(f"invalid inference option {'.'.join(map(str, first['loc']))!r}: {first['msg']}. "
                                  f"Inference options: {allowed}.") from None
    kv = get_kv_dtype(kv_dtype if kv_dtype is not None else default_kv_dtype(fmt, profile))
    acc = resolve_gpu(gpu)
    if profile.name not in fmt.engines:
        raise UnsupportedError(format_support(fmt, None, profile.name).reason + ".")
    if check_support and acc is not None:
        support = format_support(fmt, acc)
        if support.supported is False:
            raise UnsupportedError(f"{support.reason}.")
    kv_ok = kv_dtype_support(kv, acc if check_support else None, profile.name)
    if kv_ok.supported is False:
        raise UnsupportedError(f"{kv_ok.reason}.")
    parallel = opts.parallel or profile.parallel_default
    tp, pp = split if split is not None else ((gpus, 1) if parallel == "tensor" else (1, gpus))
    if tp > 1:
        require_tensor_parallel(spec, tp)
    if pp > spec.total_layers:
        raise InvalidRequestError(f"{pp} pipeline stages exceed the {spec.total_layers} layers of {spec.name}.")
    implied = hf_version_defaults(opts.transformers_version) if opts.transformers_version else {}
    if implied and profile.name != "hf":
        raise InvalidRequestError(f"transformers_version applies to engine 'hf', not {profile.name!r}.")
    logits = opts.hf_logits or implied.get("hf_logits", (None,))[0] or profile.logits_default
    hf_cache = opts.hf_cache or implied.get("hf_cache", (None,))[0] or "dynamic"
    if opts.cache_len is not None and hf_cache != "static":
        raise InvalidRequestError("cache_len sizes a pre-allocated cache: use it with hf_cache='static'.")
    if hf_cache == "static" and profile.name != "hf":
        raise InvalidRequestError(f"hf_cache='static' is a transformers option (engine 'hf'), not {profile.name!r}.")
    if opts.cache_len is not None and opts.cache_len < tokens.total:
        raise InvalidRequestError(f"cache_len {opts.cache_len:,} is shorter than prompt + new tokens "
                                  f"({tokens.total:,}); a static cache cannot grow past it.")
    setup = InferenceSetup(
        spec=spec, fmt=fmt, engine=profile, kv=kv, tp=tp, pp=pp, attention=opts.attention, logits=logits,
        hf_cache=hf_cache, cache_len=opts.cache_len,
        module_loading=opts.cuda_module_loading,
        compute_capability=acc.compute_capability_tuple if acc is not None else None,
        gpu_memory_utilization=opts.gpu_memory_utilization or constant("vllm_gpu_memory_utilization").value,
        max_num_batched_tokens=opts.max_num_batched_tokens or int(constant("vllm_max_num_batched_tokens").value),
        max_num_seqs=opts.max_num_seqs or int(constant("vllm_max_num_seqs").value),
        n_ubatch=opts.n_ubatch or int(constant("llamacpp_n_ubatch").value), flash_attn=opts.flash_attn,
        prefill_chunk_size=opts.prefill_chunk_size)
    plan = build_inference_plan(setup)
    warnings = list(spec.assumptions)  # how the model name or config was read (variant, generic reader)
    limit = spec.max_position_embeddings
    if limit is not None and tokens.total > limit:
        warnings.append(f"{tokens.total:,} tokens exceed {spec.name}'s max_position_embeddings ({limit:,}); "
                        "the model was not trained for this context")
    assumptions = {
        "engine": profile.name, "precision": fmt.name, "compute_dtype": fmt.compute_dtype, "kv_dtype": kv.name,
        "prompt_tokens": tokens.prompt, "new_tokens": tokens.new, "tokens_note": tokens.note,
        "parallel": f"tensor x{tp}" if tp > 1 else f"pipeline x{pp}" if pp > 1 else "single device",
        "attention": setup.attention, "logits": logits, "cuda_module_loading": setup.module_loading,
        **({"hf_cache": setup.hf_cache} if profile.name == "hf" else {}),
        **({"cache_len": setup.cache_len or "prompt + new tokens"} if setup.hf_cache == "static" else {}),
        **({"transformers_version": f"{opts.transformers_version}: " + "; ".join(
            f"{k}={v} ({src})" for k, (v, src) in implied.items())} if opts.transformers_version else {}),
        "gpu": acc.name if acc is not None else None,
    }
    if profile.name == "vllm":
        assumptions.update(gpu_memory_utilization=setup.gpu_memory_utilization,
                           max_num_batched_tokens=setup.max_num_batched_tokens, max_num_seqs=setup.max_num_seqs)
    if profile.name == "llamacpp":
        assumptions.update(n_ubatch=setup.n_ubatch, flash_attn=setup.flash_attn)
    if setup.prefill_chunk_size:
        assumptions["prefill_chunk_size"] = setup.prefill_chunk_size
    return PreparedInference(setup, plan, tokens, batch, acc, assumptions, tuple(warnings))


def _totals(prepared: PreparedInference) -> list[PhaseTotals]:
    return phase_totals(prepared.plan.terms, prepared.plan.phases, batch=prepared.batch,
                        prompt=prepared.tokens.prompt, total=prepared.tokens.total, window=prepared.plan.window)


def build_inference_estimate(prepared: PreparedInference) -> MemoryEstimate:
    """The MemoryEstimate of a prepared request (the peak phase's terms, safe bound, fit on the GPU)."""
    setup, plan = prepared.setup, prepared.plan
    totals = _totals(prepared)
    peak = peak_phase(totals)
    phase = next(p for p in plan.phases if p.name == peak.name)
    terms = to_memory_terms(plan.terms, phase, batch=prepared.batch, prompt=prepared.tokens.prompt,
                            total=prepared.tokens.total, window=plan.window)
    safe = safe_bytes(totals) / plan.safe_divisor
    spec = setup.spec
    extras: dict[str, Any] = {
        "peak_phase": peak.name, "peak_phase_description": phase.description,
        "phases_gib": {t.name: round(t.allocated / GIB, 4) for t in totals},
        "phases_safe_gib": {t.name: round(t.upper_device / plan.safe_divisor / GIB, 4) for t in totals},
        "safe_allocated_gib": max(t.upper_allocated for t in totals) / GIB,
        "kv_cache_bytes_per_token": plan.kv_bytes_per_token,
        "weights_all_devices_gib": plan.weights.total_all_devices / GIB,
    }
    gpus = setup.tp * setup.pp
    if gpus > 1:
        extras["total_all_devices_gib"] = _all_devices_gib(prepared, peak)
    acc = prepared.gpu
    if acc is not None:
        fits, headroom, pct = fits_on(safe / GIB, acc)
        extras["fit"] = GpuFit(gpu=acc.name, usable_gib=acc.memory_usable_gib, fits=fits, headroom_gib=headroom,
                               headroom_pct=pct, format_support=format_support(setup.fmt, acc, setup.engine.name).reason)
        if setup.engine.name == "vllm":
            extras["kv_pool"] = _vllm_pool(prepared, acc.memory_usable_gib * GIB)
    if setup.engine.name == "vllm":
        assumptions = {**prepared.assumptions, "safe_rule": "safe = largest upper total / gpu_memory_utilization "
                                                             "(vLLM only starts if utilization x capacity covers it)"}
    else:
        assumptions = {**prepared.assumptions, "safe_rule": "safe = largest phase with every term at its upper bound"}
    return MemoryEstimate(
        model=spec.name, params_total=spec.params.total, params_active=spec.params.active, precision=setup.fmt.name,
        mode="inference", engine=setup.engine.name, gpus=gpus, batch=prepared.batch, seq_len=prepared.tokens.total,
        peak_allocated_gib=peak.allocated / GIB, device_total_gib=peak.device / GIB, safe_gib=safe / GIB,
        breakdown_gib=sum_terms(terms), terms=terms, assumptions=assumptions, warnings=prepared.warnings,
        **extras)


def _all_devices_gib(prepared: PreparedInference, peak: PhaseTotals) -> float:
    """Sum over all devices: tensor-parallel devices are alike; pipeline stages share the layers."""
    setup = prepared.setup
    if setup.tp > 1:
        return peak.allocated * setup.tp / GIB
    weights = prepared.plan.weights
    per_device_weights = weights.total
    kv_all = prepared.plan.kv_bytes_per_token * setup.pp * prepared.batch * prepared.tokens.total
    kv_device = prepared.plan.kv_bytes_per_token * prepared.batch * prepared.tokens.total
    rest = peak.allocated - per_device_weights - kv_device
    return (weights.total_all_devices + kv_all + setup.pp * max(rest, 0.0)) / GIB


def _vllm_pool(prepared: PreparedInference, capacity_bytes: float) -> KVPool:
    """vLLM's KV pool on a device: utilization x capacity minus everything but the KV cache."""
    setup, plan = prepared.setup, prepared.plan
    fixed = phase_totals([t for t in plan.terms if t.key != "kv_cache"], plan.phases, batch=prepared.batch,
                         prompt=prepared.tokens.prompt, total=prepared.tokens.total, window=plan.window)[0].device
    pool = setup.gpu_memory_utilization * capacity_bytes - fixed
    tokens = max(0, int(pool // plan.kv_bytes_per_token)) if plan.kv_bytes_per_token else 0
    return KVPool(kv_pool_gib=pool / GIB, kv_cache_tokens=tokens,
                  max_concurrent_sequences=tokens // prepared.tokens.total if prepared.tokens.total else 0)


def prepare_inference_with_default(model: Any, precision: str | WeightFormat | None, *, engine: str = "hf",
                                   **kwargs: Any) -> PreparedInference:
    """:func:`prepare_inference` where ``precision=None`` means the checkpoint's own format (gpt-oss:
    mxfp4, DeepSeek-V3: fp8-block, a ``*-AWQ`` repo: awq-int4), else bf16; an error caused by that
    default says it was the default and what to pass instead. ``assumptions["precision_source"]`` says
    where a checkpoint format came from."""
    if precision is not None:
        return prepare_inference(model, precision, engine=engine, **kwargs)
    from planner.models.checkpoint import default_precision, default_precision_note, format_origin

    spec = get_model(model)
    fmt = get_format(default_precision(spec))
    from_checkpoint = default_precision_note(spec)
    if get_engine(engine).name not in fmt.engines:
        raise UnsupportedError(
            f"the default precision of {spec.name} is {fmt.name}, the format it ships in ({format_origin(spec)}), "
            f"and engine {engine!r} does not run it (runs on: {', '.join(fmt.engines)}): pass --engine "
            f"{fmt.engines[0]}, or --precision for another format.")
    try:
        prepared = prepare_inference(spec, fmt, engine=engine, **kwargs)
    except UnsupportedError as error:
        # The user never chose this precision: say it was the default, and what to pass instead.
        origin = "the format the checkpoint ships in" if from_checkpoint else "you did not pass --precision"
        other = "fp16" if fmt.name == "bf16" else "bf16"
        raise UnsupportedError(f"{str(error).rstrip('.')} ({fmt.name} is the default precision, {origin}); pass "
                               f"--precision {other} (or another format).") from None
    if from_checkpoint:
        prepared.assumptions["precision_source"] = from_checkpoint
    return prepared


def estimate_memory(model: Any, precision: str | WeightFormat | None = None, mode: str = "inference", *, batch: int = 1,
                    seq_len: int | None = None, prompt_len: int | None = None, new_tokens: int | None = None,
                    engine: str = "hf", gpus: int = 1, kv_dtype: str | None = None, gpu: Any = None,
                    **options: Any) -> MemoryEstimate:
    """Per-device memory of running ``model`` in ``precision`` (see MemoryEstimate for the totals).

    ``mode="inference"`` takes the engine options of :class:`InferenceOptions` as keywords; any
    other mode is a training estimate handled by ``planner.memory.training`` with its own options.
    """
    from planner.validate import reject_non_finite_options

    reject_non_finite_options(options)  # NaN/inf (training_tokens=nan would print "$nan")
    if mode != "inference":
        return _training_estimate(model, precision, mode, batch=batch, seq_len=seq_len, gpus=gpus, gpu=gpu,
                                  options=options)
    return build_inference_estimate(prepare_inference_with_default(
        model, precision, batch=batch, seq_len=seq_len, prompt_len=prompt_len, new_tokens=new_tokens, engine=engine,
        gpus=gpus, kv_dtype=kv_dtype, gpu=gpu, **options))


def _training_estimate(model: Any, precision: Any, mode: str, *, batch: int, seq_len: int | None, gpus: int,
                       gpu: Any, options: dict[str, Any]) -> MemoryEstimate:
    try:
        training = importlib.import_module("planner.memory.training")
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("planner.memory.training"):
            raise UnsupportedError(f"mode {mode!r} is not available in this version; modes that exist: "
                                   f"{', '.join(INFERENCE_MODES)}.") from None
        raise
    spec = get_model(model)
    fmt = get_format(precision if precision is not None else training.default_precision(mode))
    return training.estimate_training_memory(spec, fmt, mode=mode, batch=batch, seq_len=seq_len, gpus=gpus,
                                             gpu=resolve_gpu(gpu), **options)

"""The planner's one door to the memory / speed / cost model: :func:`deployment`.

Every figure of a candidate (memory, GPUs needed, tokens/s, $/h, $/1M tokens) comes from the shared
estimator through this function, for the derived architecture (``planner.models.derive``) in the
candidate's weight format and KV dtype. The planner adds nothing to the physics but the sparse-weight
bytes of ``sparse_storage`` (which the dense estimator does not know): the resident weight bytes change
by ``weight_delta_bytes`` (all devices, split evenly over the GPUs), and with a 2:4 kernel the bytes a
decode step reads change by ``read_delta_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.errors import FitplanError
from planner.memory.result import GIB
from planner.models.spec import ModelSpec
from planner.planning.constraints import Constraints

# GPU counts tried when one model copy does not fit on the constraint's count (multiples of it).
GPU_COUNT_STEPS = (1, 2, 4, 8, 16)
FINE_TUNING_MODES = {"float": "lora", "bnb": "qlora"}


@dataclass(frozen=True)
class Deployment:
    """Figures of one (architecture, weight format, KV dtype) on the constraint's hardware.

    ``memory_gib`` and ``fits`` are at the constraint's GPU count; ``gpus_needed`` is the smallest of
    1, 2, 4, 8, 16 times that count on which it fits (0: none, or no split of the model over more GPUs
    works; fine-tuning is not spread over more GPUs, that needs a sharding choice; without a named GPU
    there is nothing to add more of); speed and cost are for ``gpus`` GPUs: the
    constraint's count when it fits there, else ``gpus_needed`` (else the constraint's count).
    """

    memory_gib: float
    weights_gib: float
    gpus: int
    gpus_needed: int
    fits: bool
    decode_tok_s: float | None
    prefill_tok_s: float | None
    usd_per_hour: float | None
    usd_per_1m_tokens: float | None
    latency_ms: float | None = None  # deployment target 'local': the executors' timed forward
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Raw:
    """What the estimator says for one GPU count, before the planner's weight-byte change."""

    memory_gib: float
    weights_gib: float
    decode_tok_s: float | None
    prefill_tok_s: float | None
    usd_per_hour: float | None
    usd_per_1m_tokens: float | None


def deployment(spec: ModelSpec, weight_format: str, kv_dtype: str | None, constraints: Constraints, *,
               weight_delta_bytes: float = 0.0, read_delta_bytes: float = 0.0, more_gpus: bool = True,
               cache: dict | None = None, key: object = None) -> Deployment:
    """Memory, speed and cost of ``spec`` in ``weight_format`` under ``constraints`` (raises FitplanError
    when the estimator rejects the combination, e.g. a format the engine does not run).

    ``more_gpus=False``: figures at the constraint's GPU count only, fitting or not (the speed reference).
    ``cache`` / ``key``: estimator answers are kept in ``cache`` under ``(key, gpus, read delta)``, where
    ``key`` identifies (architecture, format, KV dtype); the weight-byte change is applied afterwards,
    so strategies that differ only in stored sparse bytes share one estimator call.
    """
    limit = constraints.memory_limit_gib()

    def at(gpus: int) -> Deployment:
        ident = (key, gpus, round(read_delta_bytes))
        raw = cache.get(ident) if cache is not None and key is not None else None
        if raw is None:
            raw = _estimator(spec, weight_format, kv_dtype, constraints, gpus, read_delta_bytes)
            if cache is not None and key is not None:
                cache[ident] = raw
        memory = raw.memory_gib + weight_delta_bytes / gpus / GIB
        fits = memory <= limit
        return Deployment(memory, raw.weights_gib + weight_delta_bytes / GIB, gpus, gpus if fits else 0, fits,
                          raw.decode_tok_s, raw.prefill_tok_s, raw.usd_per_hour, raw.usd_per_1m_tokens)

    base = constraints.gpus
    first = at(base)
    if first.fits or not more_gpus or constraints.mode == "fine-tuning" or constraints.gpu is None:
        # no GPU named (a capacity budget only): more devices of nothing are not a deployment
        return first if first.fits or not more_gpus else replace(first, gpus_needed=0)
    for step in GPU_COUNT_STEPS[1:]:
        try:
            more = at(base * step)
        except FitplanError:
            break  # a split the model cannot take (more stages than layers, heads not divisible): it does not fit
        if more.fits:
            return replace(more, memory_gib=first.memory_gib, fits=False)
    return replace(first, gpus_needed=0)


def _estimator(spec: ModelSpec, weight_format: str, kv_dtype: str | None, constraints: Constraints, gpus: int,
               read_delta: float) -> _Raw:
    from planner.estimate import estimate

    if constraints.mode == "fine-tuning":
        return _fine_tuning(spec, weight_format, constraints, gpus)
    result = estimate(spec, weight_format, gpu=constraints.gpu_accelerator(), gpus=gpus,
                      engine=constraints.resolved_engine, batch=constraints.resolved_batch,
                      seq_len=constraints.resolved_context, kv_dtype=kv_dtype)
    speed, cost = result.speed, result.cost
    if read_delta and speed is not None:
        speed, cost = _speed_with_read_delta(spec, weight_format, kv_dtype, constraints, gpus, read_delta)
    return _Raw(result.memory.safe_gib, result.memory.weights_all_devices_gib or 0.0,
                speed.decode_tokens_per_s if speed else None, speed.prefill_tokens_per_s if speed else None,
                cost.usd_per_hour if cost else None, cost.usd_per_million_output_tokens if cost else None)


def _speed_with_read_delta(spec: ModelSpec, weight_format: str, kv_dtype: str | None, constraints: Constraints,
                           gpus: int, read_delta: float):
    """Speed and cost when a decode step reads ``read_delta`` more bytes than the one-format weights
    (2:4 weights read compressed by a sparse kernel; per-group formats): the speed model's own
    ``predict_speed`` on the changed bytes."""
    from planner.memory.api import prepare_inference
    from planner.speed import ReadBytes, estimate_cost, get_speed_engine, predict_speed, read_bytes

    engine = get_speed_engine(constraints.resolved_engine)
    prepared = prepare_inference(spec, weight_format, batch=constraints.resolved_batch,
                                 seq_len=constraints.resolved_context, engine=engine.memory_engine, gpus=gpus,
                                 kv_dtype=kv_dtype, gpu=constraints.gpu_accelerator())
    setup, plan = prepared.setup, prepared.plan
    reads = read_bytes(setup.spec, plan.weights, setup.tp)
    reads = ReadBytes(max(0.0, reads.dense + read_delta / setup.tp), reads.experts, reads.num_experts,
                      reads.experts_per_token)
    speed = predict_speed(setup.spec, setup.fmt, engine, prepared.gpu, reads=reads,
                          kv_bytes_at=lambda b, t: plan.kv_coeffs.at(b, t, plan.window), batch=prepared.batch,
                          prompt=prepared.tokens.prompt, new=prepared.tokens.new, tp=setup.tp, pp=setup.pp)
    cost = estimate_cost(prepared.gpu, setup.tp * setup.pp, speed.decode_tokens_per_s, speed.prefill_tokens_per_s)
    return speed, cost


def _fine_tuning(spec: ModelSpec, weight_format: str, constraints: Constraints, gpus: int) -> _Raw:
    """Memory of LoRA (float / int8 base) or QLoRA (bitsandbytes 4-bit base) training on the compressed model."""
    from planner.errors import UnsupportedError
    from planner.estimate import estimate
    from planner.formats import get_format

    fmt = get_format(weight_format)
    mode = "lora" if fmt.name == "int8" else FINE_TUNING_MODES.get(fmt.family)
    if mode is None or (mode == "qlora" and fmt.bits != 4):
        raise UnsupportedError(f"fine-tuning needs a float, int8 or bitsandbytes 4-bit base; {fmt.name} has no "
                               "LoRA/QLoRA path")
    result = estimate(spec, fmt.name, mode=mode, batch=constraints.resolved_batch,
                      seq_len=constraints.resolved_context, gpus=gpus, gpu=constraints.gpu_accelerator())
    weights = (result.memory.breakdown_gib.get("weights_quantized", 0.0)
               + result.memory.breakdown_gib.get("weights_unquantized", 0.0)) * gpus
    return _Raw(result.memory.safe_gib, weights, None, None, None, None)

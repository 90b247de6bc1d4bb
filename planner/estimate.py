"""``planner.estimate``: the one public answer to "memory, speed and cost of running this model".

Returns an :class:`Estimate` with the per-device :class:`~planner.memory.MemoryEstimate`, the
:class:`~planner.speed.SpeedEstimate` (decode/prefill tokens/s, time to first token, per-token
latency, each with its step breakdown) and the :class:`~planner.speed.CostEstimate` ($/hour,
$/1M output and input tokens). ``fitplan estimate`` prints exactly this object.
A part that cannot be computed is None with the reason in ``speed_unknown`` / ``cost_unknown``:
no GPU given, a GPU without bandwidth, no cloud price, a training mode.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from planner.memory.result import MemoryEstimate
from planner.speed.result import CostEstimate, SpeedEstimate


class Estimate(BaseModel):
    """Memory, speed and cost of one model run (speed and cost need a GPU)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    precision: str
    mode: str
    engine: str = Field(description="the engine the speed is modelled for")
    memory_engine: str = Field(description="the engine whose memory behaviour the memory estimate models")
    gpu: str | None
    gpus: int
    memory: MemoryEstimate
    speed: SpeedEstimate | None = None
    cost: CostEstimate | None = None
    speed_unknown: str | None = Field(None, description="why there is no speed")
    cost_unknown: str | None = Field(None, description="why there is no cost")

    def as_json_dict(self) -> dict[str, Any]:
        """The ``fitplan estimate --json`` payload."""
        return self.model_dump(mode="json")


def estimate(model: Any, precision: str | None = None, *, gpu: Any = None, gpus: int = 1, engine: str = "hf",
             batch: int = 1, seq_len: int | None = None, prompt_len: int | None = None,
             new_tokens: int | None = None, mode: str = "inference", kv_dtype: str | None = None,
             **options: Any) -> Estimate:
    """Memory, speed and cost of running ``model`` in ``precision`` on ``gpus`` x ``gpu`` with ``engine``.

    ``engine``: hf, vllm, llamacpp, litgpt, or a speed-only engine (tensorrt-llm, exllamav2,
    torch-compile, mlc; their memory is estimated with the engine named by their ``memory_engine``).
    Tokens: ``prompt_len`` + ``new_tokens`` (or ``seq_len``, taken as one prompt). Other keywords are
    the engine options of ``estimate_memory`` (inference) or its training options (other modes).

    >>> e = estimate("meta-llama/Llama-3.1-8B", "awq-int4", gpu="RTX 4090", engine="vllm",
    ...              prompt_len=512, new_tokens=256)
    >>> e.speed.decode_tokens_per_s, e.cost.usd_per_million_output_tokens  # doctest: +SKIP
    """
    from planner.memory.api import build_inference_estimate, estimate_memory, prepare_inference_with_default
    from planner.speed.cost import estimate_cost
    from planner.speed.engines import get_speed_engine
    from planner.speed.model import SpeedUnknown, speed_of

    speed_engine = get_speed_engine(engine)
    memory_engine = speed_engine.memory_engine
    if mode != "inference":
        memory = estimate_memory(model, precision, mode, batch=batch, seq_len=seq_len, engine=memory_engine,
                                 gpus=gpus, gpu=gpu, **options)
        return Estimate(model=memory.model, precision=memory.precision, mode=mode, engine=speed_engine.name,
                        memory_engine=memory_engine, gpu=None if gpu is None else str(gpu), gpus=gpus,
                        memory=memory, speed_unknown="training throughput is in memory (fine-tuning modes)",
                        cost_unknown="training cost is in memory (fine-tuning modes)")
    # precision None = the checkpoint's own format (mxfp4, fp8, awq, ...), else bf16
    prepared = prepare_inference_with_default(model, precision, batch=batch, seq_len=seq_len, prompt_len=prompt_len,
                                              new_tokens=new_tokens, engine=memory_engine, gpus=gpus,
                                              kv_dtype=kv_dtype, gpu=gpu, **options)
    memory = build_inference_estimate(prepared)
    speed = cost = None
    speed_unknown = cost_unknown = None
    acc = prepared.gpu
    if acc is None:
        speed_unknown = cost_unknown = "no GPU given (gpu=...)"
    else:
        try:
            speed = speed_of(prepared, speed_engine)
        except SpeedUnknown as reason:
            speed_unknown = str(reason)
        cost = estimate_cost(acc, prepared.setup.tp * prepared.setup.pp,
                             speed.decode_tokens_per_s if speed else None,
                             speed.prefill_tokens_per_s if speed else None)
    return Estimate(model=memory.model, precision=memory.precision, mode="inference", engine=speed_engine.name,
                    memory_engine=memory_engine, gpu=acc.name if acc is not None else None, gpus=memory.gpus,
                    memory=memory, speed=speed, cost=cost, speed_unknown=speed_unknown, cost_unknown=cost_unknown)


class _CallableModule(types.ModuleType):
    """``planner.estimate`` is both this module and its function: importing the submodule (e.g.
    ``from planner.estimate import Estimate``) makes Python bind the module object to the package
    attribute ``planner.estimate``, so the module forwards calls to :func:`estimate`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Estimate:
        return estimate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

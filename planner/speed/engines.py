"""Speed constants of each inference engine: priors (engines.toml ``[speed.*]``) and fitted values.

The fitted values (``speed_calibration.toml``, written by ``benchmarks/speed_accuracy.py --fit``)
override the priors constant by constant; each engine records which constants were fitted and on
which published rows. Kernel factors (decode speed of a weight format's kernels relative to the
bandwidth roofline of its stored bytes) come from the fit when it has them, else from formats.toml
``decode_speed`` (the prior, per memory engine).
"""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from planner._data import read_data_toml
from planner.errors import UnsupportedError

if TYPE_CHECKING:
    from planner.formats import WeightFormat

ALIASES = {"transformers": "hf", "huggingface": "hf", "ollama": "llamacpp", "llamacppserver": "llamacpp",
           "lightning": "litgpt", "trtllm": "tensorrt-llm", "tensorrtllm": "tensorrt-llm", "trt": "tensorrt-llm",
           "exllama": "exllamav2", "exl2": "exllamav2", "gptfast": "torch-compile", "torchao": "torch-compile",
           "torchcompile": "torch-compile", "compile": "torch-compile", "mlcllm": "mlc"}


class EngineSpeed(BaseModel):
    """The constants of one engine's step-time model (see planner.speed.step)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str
    memory_engine: str = Field(description="the [engines.*] memory model this engine's memory is estimated with")
    bandwidth_efficiency: float = Field(gt=0, le=1, description="share of peak DRAM bandwidth streaming 16-bit weights")
    step_overhead_ms: float = Field(ge=0, description="fixed cost of one forward step (sampling, scheduler, Python)")
    layer_overhead_us: float = Field(ge=0, description="per decoder layer per step (kernel launches, Python)")
    expert_loop: bool = Field(description="MoE layers loop over experts (one launch group per expert run)")
    expert_overhead_us: float = Field(ge=0, description="per expert run per MoE layer, when expert_loop")
    prefill_mfu: float = Field(gt=0, le=1, description="share of peak matmul TFLOPS in the prefill")
    vector_share: float = Field(ge=0, lt=1, description="share of the FLOPs run on the vector units at the fp32 rate "
                                                         "(dequantization, norms, softmax, unfused elementwise work)")
    decode_mfu: float = Field(gt=0, le=1, description="share of peak matmul TFLOPS in a compute-bound decode step")
    multi_gpu_efficiency: float = Field(gt=0, le=1, description="speed-up per GPU kept when split over several")
    continuous_batching: bool = Field(description="requests join and leave the running batch every step")
    fp16_accumulate: bool = Field(False, description="16-bit matmuls accumulate in FP16 (full rate on GeForce)")
    kernels: dict[str, float] = Field(default_factory=dict, description="fitted kernel factor per weight format")
    compute_kernels: dict[str, float] = Field(default_factory=dict,
                                              description="fitted MFU factor per weight format in compute-bound steps")
    source: str = Field(min_length=1)
    fitted: tuple[str, ...] = Field((), description="constants taken from speed_calibration.toml")
    fit_rows: tuple[str, ...] = Field((), description="ids of the published rows the fitted constants came from")

    def prior_kernel_factor(self, fmt: WeightFormat) -> tuple[float, str]:
        """(factor, source) from formats.toml ``decode_speed`` (this engine, else its memory engine)."""
        for engine in (self.name, self.memory_engine):
            if engine in fmt.decode_speed:
                factor = fmt.decode_speed[engine]
                return factor.factor, factor.source
        if fmt.family == "float":
            return 1.0, "reference: 16/32-bit weights define the engine's bandwidth efficiency"
        return 1.0, f"no kernel factor for {fmt.name} in {self.name}: taken as the bandwidth roofline"

    def kernel_factor(self, fmt: WeightFormat) -> tuple[float, str]:
        """(factor, source) of ``fmt``'s decode kernels in this engine.

        A fitted factor when the published rows had the format; otherwise the formats.toml prior,
        rescaled by how the fitted quantized formats of this engine moved from their priors (the
        geometric mean of fitted / prior): an unmeasured format keeps its prior ratio to measured ones.
        """
        if fmt.name in self.kernels:
            return self.kernels[fmt.name], f"fitted on published {self.name} measurements (speed_calibration.toml)"
        prior, source = self.prior_kernel_factor(fmt)
        if self.kernels and fmt.family != "float":
            from planner.formats import get_format

            shifts = [math.log(v / self.prior_kernel_factor(get_format(k))[0]) for k, v in self.kernels.items()]
            scale = math.exp(sum(shifts) / len(shifts))
            return prior * scale, f"{source}; rescaled x{scale:.3g} like the fitted {', '.join(self.kernels)}"
        return prior, source

    def compute_factor(self, fmt: WeightFormat) -> tuple[float, str]:
        """(factor on the MFU, source) of ``fmt``'s matmuls in compute-bound steps (batched decode, prefill)."""
        if fmt.name in self.compute_kernels:
            return self.compute_kernels[fmt.name], f"engines.toml / speed_calibration.toml ({self.name})"
        return 1.0, f"no compute measurement of {fmt.name} in {self.name}: the engine's MFU"


@cache
def _calibration() -> dict:
    return read_data_toml("speed_calibration.toml", 1).get("engines", {})


@cache
def prior_speed_engines() -> dict[str, EngineSpeed]:
    """The engines with their prior constants only (engines.toml ``[speed.*]``; what a fit starts from)."""
    return {name: EngineSpeed(name=name, **prior) for name, prior in read_data_toml("engines.toml", 1)["speed"].items()}


@cache
def _speed_engines() -> dict[str, EngineSpeed]:
    fitted = _calibration()
    engines = {}
    for name, prior in prior_speed_engines().items():
        fit = dict(fitted.get(name, {}))
        rows = tuple(fit.pop("rows", ()))
        kernels = fit.pop("kernels", {})
        compute = fit.pop("compute_kernels", {})
        engines[name] = EngineSpeed(**{**prior.model_dump(), **fit, "kernels": {**prior.kernels, **kernels},
                                       "compute_kernels": {**prior.compute_kernels, **compute},
                                       "fit_rows": rows,
                                       "fitted": (*fit, *(f"kernel:{k}" for k in kernels),
                                                  *(f"compute:{k}" for k in compute))})
    return engines


def speed_engine_names() -> list[str]:
    return list(_speed_engines())


def get_speed_engine(name: str | EngineSpeed) -> EngineSpeed:
    """The speed constants of engine ``name`` (hf, vllm, llamacpp, litgpt, tensorrt-llm, exllamav2, ...)."""
    if isinstance(name, EngineSpeed):
        return name
    engines = _speed_engines()
    key = str(name).strip().lower()
    if key not in engines:
        squashed = key.replace("-", "").replace("_", "").replace(".", "").replace(" ", "")
        key = ALIASES.get(squashed, squashed)
    if key not in engines:
        from hardware_db.names import did_you_mean

        raise UnsupportedError(f"unknown engine {name!r}.{did_you_mean(str(name), engines)} "
                               f"Engines with a speed model: {', '.join(engines)}.")
    return engines[key]

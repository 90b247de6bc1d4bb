"""Speed constants of each inference engine: priors (engines.toml ``[speed.*]``) and fitted values.

The fitted values (``speed_calibration.toml``, written by ``benchmarks/speed_accuracy.py --fit``)
override the priors constant by constant; each engine records which constants were fitted and on
which published rows. Kernel factors (decode speed of a weight format's kernels relative to the
bandwidth roofline of its stored bytes) come from the fit when it has them, else from formats.toml
``decode_speed`` (the prior, per memory engine).
"""

from __future__ import annotations

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
    decode_mfu: float = Field(gt=0, le=1, description="share of peak matmul TFLOPS in a compute-bound decode step")
    multi_gpu_efficiency: float = Field(gt=0, le=1, description="speed-up per GPU kept when split over several")
    continuous_batching: bool = Field(description="requests join and leave the running batch every step")
    kernels: dict[str, float] = Field(default_factory=dict, description="fitted kernel factor per weight format")
    source: str = Field(min_length=1)
    fitted: tuple[str, ...] = Field((), description="constants taken from speed_calibration.toml")
    fit_rows: tuple[str, ...] = Field((), description="ids of the published rows the fitted constants came from")

    def kernel_factor(self, fmt: WeightFormat) -> tuple[float, str]:
        """(factor, source) of ``fmt``'s decode kernels in this engine."""
        if fmt.name in self.kernels:
            return self.kernels[fmt.name], f"fitted on published {self.name} measurements (speed_calibration.toml)"
        for engine in (self.name, self.memory_engine):
            if engine in fmt.decode_speed:
                factor = fmt.decode_speed[engine]
                return factor.factor, factor.source
        if fmt.family == "float":
            return 1.0, "reference: 16/32-bit weights define the engine's bandwidth efficiency"
        return 1.0, f"no kernel factor for {fmt.name} in {self.name}: taken as the bandwidth roofline"


@cache
def _calibration() -> dict:
    return read_data_toml("speed_calibration.toml", 1).get("engines", {})


@cache
def _speed_engines() -> dict[str, EngineSpeed]:
    raw = read_data_toml("engines.toml", 1)["speed"]
    fitted = _calibration()
    engines = {}
    for name, prior in raw.items():
        fit = dict(fitted.get(name, {}))
        rows = tuple(fit.pop("rows", ()))
        kernels = fit.pop("kernels", {})
        engines[name] = EngineSpeed(name=name, **{**prior, **fit}, kernels=kernels,
                                    fitted=tuple(fit) + tuple(f"kernel:{k}" for k in kernels), fit_rows=rows)
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

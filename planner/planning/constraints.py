"""``Constraints``: what the user requires of a compressed model (the seed lab's ``target_constraints``).

Every limit is optional; a plan needs a device budget (``max_memory_gb`` and/or ``gpu``) and at least
one limit to rank against. Units and meanings (one meaning each, shared by ``fitplan plan`` and
``fitplan search``):

- ``max_memory_gb``: per-device memory budget in GiB (2**30 bytes, like the GPU catalog's usable
  capacity), compared with the estimator's *safe* bound. With ``gpu`` too, the smaller of the two
  limits applies.
- ``gpu`` / ``gpus``: the target accelerator (catalog name or alias) and how many of them serve one
  model copy. Speed and cost are computed on it.
- ``max_accuracy_loss``: percent of quality lost relative to the uncompressed model (100 - predicted
  "quality retained"); the point prediction is compared, its 80% interval is reported.
- ``min_speedup``: decode (or prefill, ``speedup_metric``) tokens/s of the candidate over the
  uncompressed model in bf16 (fp16 where the GPU has no bf16) on the same GPU count and engine.
- ``max_cost_per_hour``: $/h of the GPUs the candidate needs; ``max_cost_per_1m_tokens``: $ per
  million generated tokens at the decode throughput; ``min_tokens_per_s``: decode throughput of the
  whole batch (tokens/s summed over the ``batch`` sequences).
- ``context`` / ``batch``: tokens per sequence and concurrent sequences of the workload.
- ``mode``: ``inference`` or ``fine-tuning`` (memory of LoRA / QLoRA training on the compressed
  base; speed and cost limits apply to inference only).
- ``deployment_target``: a preset from ``planner/data/deployment_targets.toml`` that fills gpu,
  engine, batch, context and the speedup metric when the user left them unset. With neither a gpu nor
  a target, the seed lab's ``cloud_inference`` applies (an NVIDIA L4 with vLLM): ``max_memory_gb`` then
  stays the budget and the L4 supplies speed and price. ``local`` is this machine as the executors
  measure it (``planner.planning.local``): memory is the measured run's peak, speed the executors'
  timed forward on their own workload (so ``batch`` / ``context`` do not apply), no price; without
  ``max_memory_gb`` the device's usable memory is the budget.

NaN and infinity are rejected everywhere; so are limits that cannot be evaluated (a speed limit with no
GPU, a cost limit on a GPU without a price).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from planner._data import read_data_toml
from planner.planning.names import DEPLOYMENT_TARGETS, OBJECTIVES  # noqa: F401  (re-exported)

DEFAULT_DEPLOYMENT_TARGET = "cloud_inference"
DEFAULT_BATCH = 1
DEFAULT_CONTEXT = 4096
DEFAULT_ENGINE = "hf"
# Constraint fields that are limits (checked per candidate), in display order.
LIMIT_FIELDS: tuple[str, ...] = ("max_memory_gb", "max_accuracy_loss", "min_speedup", "max_cost_per_hour",
                                 "max_cost_per_1m_tokens", "min_tokens_per_s")
SPEED_LIMITS: tuple[str, ...] = ("min_speedup", "max_cost_per_1m_tokens", "min_tokens_per_s")


class DeploymentTarget(BaseModel):
    """One preset of ``deployment_targets.toml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    gpu: str | None = None
    device: Literal["local"] | None = Field(None, description="'local': the device the executors measure on "
                                            "(planner.planning.local); its workload is the executors'")
    engine: str
    batch: int | None = Field(None, ge=1)
    context: int | None = Field(None, ge=1)
    speedup_metric: Literal["decode", "prefill"] = "decode"
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _workload(self) -> "DeploymentTarget":
        if self.device is None and (self.batch is None or self.context is None):
            raise ValueError(f"deployment target {self.name!r} needs a batch and a context")
        return self


@cache
def deployment_targets() -> dict[str, DeploymentTarget]:
    """The presets, by name."""
    raw = read_data_toml("deployment_targets.toml", 1)
    return {name: DeploymentTarget(name=name, **entry) for name, entry in raw["targets"].items()}


def _finite(**kwargs: Any) -> Any:
    return Field(None, allow_inf_nan=False, **kwargs)


class Constraints(BaseModel):
    """The user's requirements; see the module docstring for units. Build with keywords or a dict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_memory_gb: float | None = _finite(gt=0, le=1e6, description="per-device memory budget, GiB")
    gpu: str | None = Field(None, description="target accelerator (catalog name or alias)")
    gpus: int = Field(1, ge=1, le=4096, description="accelerators serving one model copy")
    max_accuracy_loss: float | None = _finite(ge=0, lt=100, description="max predicted quality loss, %")
    min_speedup: float | None = _finite(gt=0, le=1000, description="min speedup over the bf16/fp16 model")
    speedup_metric: Literal["decode", "prefill"] | None = Field(None, description="which throughput min_speedup "
                                                                "compares (default decode)")
    max_cost_per_hour: float | None = _finite(gt=0, description="max $/h of the GPUs")
    max_cost_per_1m_tokens: float | None = _finite(gt=0, description="max $ per 1M generated tokens")
    min_tokens_per_s: float | None = _finite(gt=0, description="min decode tokens/s of the whole batch")
    context: int | None = Field(None, ge=1, le=10_000_000, description="tokens per sequence")
    batch: int | None = Field(None, ge=1, le=1_000_000, description="concurrent sequences")
    mode: Literal["inference", "fine-tuning"] = "inference"
    engine: str | None = Field(None, description="hf, vllm, llamacpp or litgpt")
    deployment_target: str | None = Field(None, description=f"preset: {', '.join(DEPLOYMENT_TARGETS)}")
    _accelerator: Any = PrivateAttr(None)

    @field_validator("deployment_target")
    @classmethod
    def _known_target(cls, value: str | None) -> str | None:
        if value is None:
            return None
        key = value.strip().lower().replace("-", "_")
        if key not in DEPLOYMENT_TARGETS:
            from hardware_db.names import did_you_mean

            raise ValueError(f"unknown deployment target {value!r}.{did_you_mean(value, DEPLOYMENT_TARGETS)} "
                             f"Allowed: {', '.join(DEPLOYMENT_TARGETS)}.")
        return key

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from planner.speed import get_speed_engine

        return get_speed_engine(value).name

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str | None) -> str | None:
        if value is None:
            return None
        import hardware_db

        acc = hardware_db.get(value.strip())
        return value.strip() if acc.is_generic else acc.name  # a capacity ("16GB") stays as typed

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not data.get("deployment_target") and data.get("gpu") is None:
            # No hardware named: the seed lab's deployment (DEFAULT_DEPLOYMENT_TARGET) supplies it.
            data = {**data, "deployment_target": DEFAULT_DEPLOYMENT_TARGET}
        if not data.get("deployment_target"):
            return data
        key = str(data["deployment_target"]).strip().lower().replace("-", "_")
        preset = deployment_targets().get(key)
        if preset is None:
            return data  # the field validator reports it
        filled = dict(data)
        for name in ("gpu", "engine", "batch", "context", "speedup_metric"):
            if filled.get(name) is None and getattr(preset, name) is not None:
                filled[name] = getattr(preset, name)
        return filled

    @property
    def is_local(self) -> bool:
        """The ``local`` target: this machine as the executors measure it (planner.planning.local)."""
        return self.deployment_target == "local"

    @model_validator(mode="after")
    def _consistent(self) -> "Constraints":
        if self.is_local:
            return self._local_consistent()
        if self.max_memory_gb is None and self.gpu is None:
            raise ValueError("give a memory budget (max_memory_gb), a gpu, or a deployment_target that names one; "
                             "nothing to fit the model into otherwise.")
        if self.gpu is None:
            asked = [name for name in (*SPEED_LIMITS, "max_cost_per_hour") if getattr(self, name) is not None]
            if asked:
                raise ValueError(f"{', '.join(asked)} need a GPU to compute speed and cost: give gpu (e.g. "
                                 "'RTX 4090') or a deployment_target other than 'cpu'.")
        if self.mode == "fine-tuning":
            asked = [name for name in (*SPEED_LIMITS, "max_cost_per_hour") if getattr(self, name) is not None]
            if asked:
                raise ValueError(f"{', '.join(asked)} apply to inference; mode 'fine-tuning' plans memory and "
                                 "quality only.")
        if self.gpu is not None and (self.max_cost_per_hour is not None or self.max_cost_per_1m_tokens is not None):
            import hardware_db

            if hardware_db.get(self.gpu).cloud_usd_per_hour is None:
                raise ValueError(f"{self.gpu} has no cloud price in the catalog, so cost limits cannot be checked; "
                                 "drop max_cost_per_hour / max_cost_per_1m_tokens or pick a priced GPU.")
        if self.gpu is not None and self.gpu_accelerator().is_generic:
            asked = [name for name in (*SPEED_LIMITS, "max_cost_per_hour") if getattr(self, name) is not None]
            if asked or self.gpus > 1:
                raise ValueError(f"{self.gpu} is a capacity, not a GPU model: it has no bandwidth or price for "
                                 f"{', '.join(asked) or 'a multi-GPU split'}; name a GPU (e.g. 'RTX 4090').")
        return self

    def _local_consistent(self) -> "Constraints":
        wrong = [flag for flag, value in (("gpu", self.gpu), ("batch", self.batch), ("context", self.context),
                                          ("max_cost_per_hour", self.max_cost_per_hour),
                                          ("max_cost_per_1m_tokens", self.max_cost_per_1m_tokens))
                 if value is not None]
        if self.gpus != 1:
            wrong.append("gpus")
        if wrong:
            raise ValueError(f"deployment target 'local' predicts the executors' own run on this machine (one "
                             f"device, their workload: encoder 32 x 64, causal LM 8 x 128 tokens; no price): "
                             f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply. Drop "
                             f"{'it' if len(wrong) == 1 else 'them'}, or plan for another target.")
        if self.mode != "inference":
            raise ValueError("deployment target 'local' predicts inference runs of the executors; mode "
                             "'fine-tuning' plans on a GPU target.")
        return self

    # Resolved settings (defaults applied) ------------------------------------------------------

    @property
    def resolved_engine(self) -> str:
        return self.engine or DEFAULT_ENGINE

    @property
    def memory_engine(self) -> str:
        """The engine whose memory behaviour and format support apply (speed-only engines map to one)."""
        from planner.speed import get_speed_engine

        return get_speed_engine(self.resolved_engine).memory_engine

    @property
    def resolved_batch(self) -> int:
        return self.batch or DEFAULT_BATCH

    @property
    def resolved_context(self) -> int:
        return self.context or DEFAULT_CONTEXT

    @property
    def resolved_speedup_metric(self) -> str:
        return self.speedup_metric or "decode"

    def gpu_accelerator(self):
        """The target ``hardware_db.Accelerator`` (None without a gpu)."""
        if self.gpu is None:
            return None
        if self._accelerator is None:  # looked up once per Constraints: plans ask thousands of times
            import hardware_db

            self._accelerator = hardware_db.get(self.gpu)
        return self._accelerator

    def memory_limit_gib(self) -> float:
        """The per-device budget: min(max_memory_gb, the GPU's usable capacity); ``local``: max_memory_gb,
        else the local device's usable memory."""
        limits = [self.max_memory_gb] if self.max_memory_gb is not None else []
        if self.is_local:
            if limits:
                return limits[0]
            from planner.planning.local import local_device

            return local_device().accelerator.memory_usable_gib
        acc = self.gpu_accelerator()
        if acc is not None:
            limits.append(acc.memory_usable_gib)
        return min(limits)

    def memory_limit_source(self) -> str:
        if self.is_local:
            return "max_memory_gb" if self.max_memory_gb is not None else "local device usable memory"
        acc = self.gpu_accelerator()
        if acc is None or (self.max_memory_gb is not None and self.max_memory_gb <= acc.memory_usable_gib):
            return "max_memory_gb"
        return f"{acc.name} usable memory"

    def active_limits(self) -> dict[str, float]:
        """Limits the user set (the memory budget always: max_memory_gb or the GPU's capacity)."""
        limits = {name: getattr(self, name) for name in LIMIT_FIELDS if getattr(self, name) is not None}
        limits["max_memory_gb"] = self.memory_limit_gib()
        return {name: limits[name] for name in LIMIT_FIELDS if name in limits}

    def summary(self) -> str:
        """One line: 'max_memory_gb=16, max_accuracy_loss=5, ... on NVIDIA L4 x1, vllm, batch 8 x 2048 tokens'."""
        limits = ", ".join(f"{name}={getattr(self, name):g}" for name in LIMIT_FIELDS
                           if getattr(self, name) is not None)
        if self.is_local:
            return f"{limits or 'no limits'}; this machine as the executors measure it (preset local)"
        where = f"{self.gpu} x{self.gpus}" if self.gpu else "no GPU"
        preset = f" (preset {self.deployment_target})" if self.deployment_target else ""
        return (f"{limits or 'no limits'}; {where}, {self.resolved_engine}, {self.mode}, batch "
                f"{self.resolved_batch} x {self.resolved_context:,} tokens{preset}")

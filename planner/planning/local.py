"""The deployment target ``local``: this machine, predicted exactly as the executors measure it.

``fitplan plan/search MODEL_DIR --deployment-target local`` plans for the device ``executors.execute``
runs on (``device="auto"``): CUDA GPU 0 when the machine has an NVIDIA GPU, else the host CPU as
probed once by ``hardware_db.probe`` (cached in ``~/.cache/fitplan/host.toml``, engine ``hf-cpu``).
Each candidate's figures are the quantities a measured run reports, from the functions that
``executors.predict`` puts next to the measurement (one source for each figure):

- memory: on CPU the whole run's peak RSS, :func:`planner.memory.cpu.estimate_cpu_process_memory`
  with the executors' default workload (:func:`executor_workload`); on CUDA the peak allocated
  (:func:`gpu_run_memory`);
- latency: the executors' timed forward over the workload's batch (:func:`forward_ms`,
  ``planner.speed.model.forward_latency`` on the probed device);
- speedup: baseline latency / candidate latency, the baseline being the model as the executors load it
  (the identity strategy: the float32 checkpoint).

The workload is the executors' (fidelity 32 x 64 tokens for an encoder, perplexity 8 x 128 for a
causal LM), the sequence length clipped to the model's positions. Never imports torch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal

from planner.errors import FitplanError, UnsupportedError
from planner.memory.result import GIB
from planner.models.spec import ModelSpec
from planner.strategy import CompressionStrategy


@dataclass(frozen=True)
class LocalDevice:
    """The device the executors measure on: ``kind`` 'cpu' (the probed host) or 'cuda' (GPU 0)."""

    kind: Literal["cpu", "cuda"]
    accelerator: Any  # hardware_db.Accelerator
    source: str

    @property
    def name(self) -> str:
        return f"{self.accelerator.name} ({self.kind})"


def _has_nvidia_driver() -> bool:
    """Whether an NVIDIA driver is present (cheap: no torch import on a machine without one)."""
    return bool(shutil.which("nvidia-smi")) or os.path.exists("/proc/driver/nvidia")


@cache
def local_device(device: str = "auto") -> LocalDevice:
    """The executors' device for ``device`` ('auto': CUDA GPU 0 when present, else the CPU; 'cpu'; 'cuda').

    The CPU is the host as probed by ``hardware_db.probe`` (measured once, cached); a CUDA GPU is its
    catalog entry (UnsupportedError when the catalog does not know it: its bandwidth is unknown).
    """
    from hardware_db.probe import cache_path, cached_host_entry, nvidia_gpus

    if device not in ("auto", "cpu", "cuda"):
        raise UnsupportedError(f"unknown executor device {device!r}; allowed: auto, cpu, cuda")
    gpus = nvidia_gpus() if device != "cpu" and _has_nvidia_driver() else []
    if gpus:
        import hardware_db

        try:
            acc = hardware_db.get(gpus[0])
        except (hardware_db.CatalogError, FitplanError):
            raise UnsupportedError(f"the local GPU {gpus[0]!r} is not in the hardware catalog, so its memory and "
                                   f"speed cannot be predicted; add it (fitplan hardware) or plan for a named "
                                   f"--gpu") from None
        return LocalDevice("cuda", acc, f"CUDA GPU 0 ({gpus[0]}, nvidia-smi), catalog entry {acc.name}")
    if device == "cuda":
        raise UnsupportedError("device 'cuda' asked, but this machine has no NVIDIA GPU")
    return LocalDevice("cpu", cached_host_entry(), f"host CPU probed by hardware_db.probe ({cache_path()})")


def model_kind(spec: ModelSpec) -> str:
    """'encoder' or 'causal-lm': the executors' model kind (how they load and evaluate it)."""
    from planner.memory.cpu import _kind_of

    return _kind_of(spec)


def executor_workload(spec: ModelSpec, kind: str | None = None, *, speed: bool = True):
    """The executors' default workload (``planner.memory.cpu.CpuWorkload.default``) for ``spec``, its
    sequence length clipped to the model's maximum positions."""
    from planner.memory.cpu import CpuWorkload

    workload = CpuWorkload.default(kind or model_kind(spec), speed=speed)
    limit = spec.max_position_embeddings
    if limit and workload.evaluate_seq_len > limit:
        workload = replace(workload, evaluate_seq_len=limit,
                           speed_seq_len=min(workload.speed_seq_len, limit) if workload.speed_seq_len else None)
    return workload


def matmul_format(strategy: CompressionStrategy) -> tuple[str, str]:
    """(weight format of the block Linears, matmul dtype) of the model the executors run for ``strategy``:
    a load-time strategy as ``planner.memory.cpu.weights_path`` says; one that goes through the
    compression steps is loaded in float32 and quantized by module replacement to its spec's main format
    and compute dtype (float32 when it has no quantization)."""
    from planner.execution import split_load_time_quantization
    from planner.memory.cpu import weights_path

    _, remaining = split_load_time_quantization(strategy)
    if remaining.is_identity:
        _, fmt, compute = weights_path(strategy)
        return fmt, compute
    quant = strategy.quantization
    return (quant.weights, quant.compute_dtype) if quant is not None else ("fp32", "fp32")


def forward_ms(spec: ModelSpec, strategy: CompressionStrategy, device: Any, *, weight_bytes: float, batch: int,
               tokens: int, influence: Sequence[float] | None = None):
    """The executors' timed forward of ``strategy`` on ``device`` (a hardware_db.Accelerator: the probed host
    or a GPU): ``planner.speed.model.forward_latency`` of the derived model in its matmul format, reading
    ``weight_bytes`` once, over ``batch`` x ``tokens`` (engine hf; hf-cpu on a CPU). ``influence``: per-block
    influence for the blocks whole-layer pruning keeps (:func:`planner.models.derive.derive_spec`). Returns the
    StepBreakdown."""
    from planner.formats import get_format
    from planner.models.derive import derive_spec
    from planner.speed.engines import get_speed_engine
    from planner.speed.model import forward_latency

    fmt, compute = matmul_format(strategy)
    return forward_latency(derive_spec(spec, strategy, influence=influence), get_format(fmt), get_speed_engine("hf"), device,
                           weight_bytes=weight_bytes, batch=batch, tokens=tokens, matmul_dtype=compute)


def gpu_run_memory(spec: ModelSpec, strategy: CompressionStrategy, workload: Any, gpu: Any = None):
    """CUDA peak allocated of the executors' evaluation: ``planner.estimate_memory`` of the derived model in the
    strategy's Linear format at the evaluation batch (per-group formats are not modelled)."""
    from planner import estimate_memory
    from planner.models.derive import derive_spec

    precision = strategy.quantization.weights if strategy.quantization else "fp32"
    return estimate_memory(derive_spec(spec, strategy), precision, batch=workload.evaluate_batch,
                           seq_len=workload.evaluate_seq_len, gpu=gpu)


@dataclass(frozen=True)
class LocalFigures:
    """What a measured run of one strategy on the local device is predicted to report."""

    memory_gib: float | None  # CPU: peak RSS of the whole run; CUDA: peak allocated
    weights_gib: float | None  # stored weights of the resulting model
    params: int | None
    latency_ms: float | None  # one timed forward over batch x tokens
    tokens_per_s: float | None  # batch x tokens / latency
    batch: int
    tokens: int
    notes: tuple[str, ...] = ()


def local_figures(spec: ModelSpec, strategy: CompressionStrategy, device: LocalDevice | None = None,
                  workload: Any = None, influence: Sequence[float] | None = None) -> LocalFigures:
    """Memory, weights and latency a measured executor run of ``strategy`` reports on ``device`` (default:
    :func:`local_device`). A figure that cannot be predicted is None with a note (never an exception
    for a strategy the executors run; FitplanError for one the model cannot take). ``influence``: each
    block's influence (a sensitivity profile's ``block_influence()``): whole-layer pruning keeps the blocks
    the executor keeps, whose per-block formats apply (else the evenly spaced assumption, noted)."""
    from planner.memory.cpu import estimate_cpu_process_memory, weights_under
    from planner.models.derive import derive_spec, influence_note, original_blocks

    device = device or local_device()
    workload = workload or executor_workload(spec)
    notes: list[str] = [note] if (note := influence_note(strategy, influence)) else []
    # raises for a cut the family cannot take (the executors refuse it)
    derived = derive_spec(spec, strategy, influence=influence)
    memory = weights = None
    if strategy.low_rank is not None:
        notes.append("memory and latency not predicted: a low-rank factorised model has no ModelSpec of its own")
        return LocalFigures(None, None, None, None, None, workload.speed_batch or workload.evaluate_batch,
                            workload.speed_seq_len or workload.evaluate_seq_len, tuple(notes))
    try:
        if device.kind == "cpu":
            estimate = estimate_cpu_process_memory(spec, strategy, workload=workload, influence=influence)
            memory, weights = estimate.peak_allocated_gib, estimate.cpu.weight_bytes
        else:
            estimate = gpu_run_memory(spec, strategy, workload, device.accelerator)
            memory = estimate.peak_allocated_gib
            weights = weights_under(derived, strategy.quantization,
                                    original_blocks(spec.num_layers, strategy, influence))[0]
    except FitplanError as error:
        notes.append(f"memory not predicted: {error}")
    batch = workload.speed_batch or workload.evaluate_batch
    tokens = workload.speed_seq_len or workload.evaluate_seq_len
    latency = tokens_per_s = None
    if weights is not None:
        try:
            step = forward_ms(spec, strategy, device.accelerator, weight_bytes=weights, batch=batch, tokens=tokens,
                              influence=influence)
        except FitplanError as error:
            notes.append(f"latency not predicted: {error}")
        else:
            latency, tokens_per_s = step.seconds * 1e3, step.tokens / step.seconds
    return LocalFigures(memory, weights / GIB if weights is not None else None, derived.params.total, latency,
                        tokens_per_s, batch, tokens, tuple(notes))


def compute_dtype(device: LocalDevice) -> str:
    """The matmul dtype a plan for ``device`` uses for compressed models: bf16 where the device runs it."""
    return "bf16" if device.accelerator.supports_bf16 else "fp32"


def executable_formats(spec: ModelSpec, device: LocalDevice, *, compute: str, wide: bool = False,
                       candidates: tuple[str, ...] | None = None) -> tuple[list[str], dict[str, str]]:
    """(weight formats the executors apply to ``spec`` on ``device`` with matmuls in ``compute``,
    {format: why not} for the others of ``candidates`` (default: every format the executors know)).

    Left out: fp32 / fp16 (not a compression of the float32 checkpoint here; bf16 is when ``compute`` is
    bf16), formats the executors cannot apply (``planner.execution.UNSUPPORTED_FORMATS``), the CPU-only
    ones on a GPU, ``dynamic-int8`` (fp32 activations only, and no storage record in the format registry,
    so its memory is not predicted), HQQ formats that cannot pack one of the model's block Linears, and
    unless ``wide`` the double-quantized and other-group-size variants.
    """
    from planner.execution import FP32_COMPUTE_ONLY, UNSUPPORTED_FORMATS, executor_formats
    from planner.formats import format_names, get_format, group_size_variant_names
    from planner.formats.storage import packing_problem

    runnable = executor_formats(device.kind)
    known = {*format_names(), *group_size_variant_names()}
    linears = {(g.out_features, g.in_features) for g in spec.param_groups
               if g.layers and g.kind == "linear" and g.out_features and g.in_features}
    keep: list[str] = []
    dropped: dict[str, str] = {}
    for name in candidates if candidates is not None else runnable:
        variant = name.endswith(("-dq", "-g32", "-g128"))
        if name in ("fp32", "fp16") or (name == "bf16" and compute != "bf16") or (variant and not wide):
            continue
        if name in UNSUPPORTED_FORMATS:
            dropped[name] = UNSUPPORTED_FORMATS[name]
        elif name not in runnable:
            dropped[name] = f"the executors do not apply {name} on {device.kind}"
        elif name in FP32_COMPUTE_ONLY and compute != "fp32":
            dropped[name] = f"takes fp32 activations only (matmuls here are {compute})"
        elif name not in known:
            dropped[name] = "no storage record in the format registry: its memory cannot be predicted"
        else:
            problems = [p for p in (packing_problem(get_format(name), o, i) for o, i in sorted(linears)) if p]
            if problems:
                dropped[name] = f"cannot pack the model's Linear layers: {problems[0]}"
            else:
                keep.append(name)
    return keep, dropped

"""Measure what a run costs: peak memory per phase, resident weight bytes, size on disk, speed.

Peak memory, per phase (startup, load, compress, evaluate):

- CUDA: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``, reset with
  ``reset_peak_memory_stats`` when the phase starts (what the planner's ``peak_allocated_gib`` and the
  caching allocator's reserve predict).
- CPU: the process's peak resident set size. Linux keeps it as ``VmHWM`` in ``/proc/self/status``;
  writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS, so each phase gets its own
  peak. It matched ``wait4``'s ``ru_maxrss`` within 1 MiB (ENVIRONMENT.md) for a child of a small
  parent; ``ru_maxrss`` is not used because it also carries the forking parent's RSS (see
  executors.isolation). psutil polling misses spikes and tracemalloc does not see torch's allocations.

Speed: latency of one batch = median of ``repeats`` timed forwards after ``warmup`` untimed ones;
tokens/s = batch x sequence length / median latency (one forward over the whole batch, the prefill
regime; generation speed is not measured here).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executors.result import LatencyMeasurement

KIB = 1024
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def read_status_bytes(fields: tuple[str, ...] = ("VmHWM", "VmRSS"), path: Path = PROC_STATUS) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` in bytes (the file gives kB = KiB)."""
    values: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0]) * KIB
    return values


def reset_peak_rss(path: Path = PROC_CLEAR_REFS) -> bool:
    """Reset VmHWM to the current RSS; False where /proc does not allow it (not Linux)."""
    try:
        path.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PhaseRecord:
    name: str
    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    rss_end_bytes: int | None = None
    cuda_peak_allocated_bytes: int | None = None
    cuda_peak_reserved_bytes: int | None = None


@dataclass
class PhaseMeter:
    """Times phases and records their memory peaks (see the module docstring).

    ``cuda`` is the ``torch.cuda`` module when the run uses a GPU (injected so the logic is testable
    without one), else None.
    """

    cuda: Any = None
    status_path: Path = PROC_STATUS
    clear_refs_path: Path = PROC_CLEAR_REFS
    phases: list[PhaseRecord] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseRecord]:
        record = PhaseRecord(name=name)
        self.phases.append(record)
        rss_resettable = reset_peak_rss(self.clear_refs_path)
        if self.cuda is not None:
            self.cuda.synchronize()
            self.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            yield record
        finally:
            if self.cuda is not None:
                self.cuda.synchronize()
                record.cuda_peak_allocated_bytes = int(self.cuda.max_memory_allocated())
                record.cuda_peak_reserved_bytes = int(self.cuda.max_memory_reserved())
            record.seconds = time.perf_counter() - start
            status = read_status_bytes(path=self.status_path)
            if rss_resettable and "VmHWM" in status:
                record.peak_rss_bytes = status["VmHWM"]
            record.rss_end_bytes = status.get("VmRSS")

    def get(self, name: str) -> PhaseRecord | None:
        return next((p for p in self.phases if p.name == name), None)

    def peak_rss_bytes(self) -> int | None:
        peaks = [p.peak_rss_bytes for p in self.phases if p.peak_rss_bytes is not None]
        return max(peaks) if peaks else None


def directory_bytes(path: str | os.PathLike) -> int:
    """Total size of the regular files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def time_calls(function: Any, *, warmup: int, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``function()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def measure_latency(model: Any, input_ids: Any, *, attention_mask: Any = None, warmup: int = 2,
                    repeats: int = 5, cuda: Any = None) -> LatencyMeasurement:
    """Median forward latency of ``model`` on one batch (see the module docstring)."""
    from executors._imports import import_torch

    torch = import_torch()
    kwargs = {"input_ids": input_ids}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask

    def forward() -> None:
        with torch.no_grad():
            model(**kwargs)
        if cuda is not None:
            cuda.synchronize()

    times = time_calls(forward, warmup=warmup, repeats=repeats)
    median = statistics.median(times)
    batch, seq_len = input_ids.shape
    return LatencyMeasurement(batch_size=int(batch), seq_len=int(seq_len), warmup=warmup, repeats=repeats,
                         median_ms=median * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3,
                         tokens_per_s=batch * seq_len / median)


def logical_params(model: Any) -> int:
    """Parameters as the architecture counts them, whatever the storage: a bitsandbytes 4-bit weight
    packs two values per byte (its ``quant_state.shape`` is the logical shape), a torch
    dynamic-int8 Linear keeps its weight outside ``parameters()``, and an HQQ Linear's packed ``W_q``
    parameter stands for ``meta["shape"]`` values (its bias is a plain tensor)."""
    import math

    total = 0
    hqq_packed = set()
    for module in model.modules():
        if type(module).__name__ == "HQQLinear" and getattr(module, "meta", None):
            hqq_packed.add(id(module.W_q))
            total += math.prod(module.meta["shape"]) + (module.bias.numel() if module.bias is not None else 0)
    for parameter in model.parameters():
        if id(parameter) in hqq_packed:
            continue
        state = getattr(parameter, "quant_state", None)
        shape = getattr(state, "shape", None)
        total += math.prod(shape) if shape is not None else parameter.numel()
    for module in model.modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic"):
            weight, bias = module._packed_params._weight_bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total

"""Measure this machine and describe it as a catalog entry (``fitplan hardware probe``).

- memory bandwidth: the best of several copies of a 256 MiB array (numpy ``copyto``), counting the
  bytes read and written (the STREAM "copy" convention, McCalpin 1995);
- matmul throughput: the best of several square matmuls (n = ``MATMUL_N``, after an untimed warm-up
  call: oneDNN builds its kernels on the first one) in fp32, bf16 and fp16 with torch when it is
  installed (its own thread count), else fp32 with numpy;
- cores and RAM from the OS (``os.cpu_count``, ``/proc/meminfo`` or psutil);
- NVIDIA GPUs from ``nvidia-smi`` (or ``torch.cuda``), reported by name for a catalog lookup.

The entry is a user hardware file like any other (``FITPLAN_HARDWARE``), so the speed model
predicts latency on this CPU as on any GPU. Figures measured on a shared machine are lower than the
hardware's peak; probe on an idle machine.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hardware_db._errors import CatalogError
from hardware_db._schema import Accelerator

BANDWIDTH_BYTES = 256 * 2**20
MATMUL_N = 512
REPEATS = 8
SLOW_CALL_S = 0.5  # a matmul slower than this is timed once (fp16 on CPUs without native support)
CACHE_ENV = "FITPLAN_CACHE_DIR"


class ProbeError(CatalogError):
    """The probe could not run (a measurement failed, a file could not be written)."""


@dataclass
class HostProbe:
    """What ``probe_host`` measured."""

    cpu_name: str
    vendor: str
    logical_cores: int
    ram_bytes: int
    available_bytes: int
    bandwidth_gbps: float
    matmul_gflops: dict[str, float]
    matmul_backend: str
    cpu_flags: tuple[str, ...] = ()
    gpus: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _cpuinfo() -> tuple[str, str, tuple[str, ...]]:
    name, vendor, flags = platform.processor() or platform.machine(), "unknown", ()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, vendor, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and value:
            name = value
        elif key == "vendor_id":
            vendor = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(value, value)
        elif key == "flags" and not flags:
            flags = tuple(value.split())
    return name, vendor, flags


def _memory() -> tuple[int, int]:
    try:
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.total), int(memory.available)
    except ImportError:
        values = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
        return values["MemTotal"], values.get("MemAvailable", values["MemTotal"])


def measure_bandwidth(size_bytes: int = BANDWIDTH_BYTES, repeats: int = REPEATS) -> float:
    """GB/s of the best array copy (bytes read + bytes written)."""
    import numpy as np

    source = np.ones(size_bytes // 8, dtype=np.float64)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch the pages first
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


def measure_matmul(n: int = MATMUL_N, repeats: int = REPEATS) -> tuple[dict[str, float], str]:
    """({dtype: GFLOPS of the best n x n matmul}, backend description)."""
    try:
        import torch
    except ImportError:
        import numpy as np

        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(repeats))
        return {"fp32": 2 * n**3 / best / 1e9}, "numpy"
    results = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a = torch.randn(n, n).to(dtype)
        try:
            a @ a  # warm-up (oneDNN generates its kernels on the first call); finds a dtype without a CPU matmul
        except RuntimeError:
            continue
        first = _timed(lambda: a @ a)
        best = first if first > SLOW_CALL_S else min(first, *(_timed(lambda: a @ a) for _ in range(repeats)))
        results[name] = 2 * n**3 / best / 1e9
    return results, f"torch {torch.__version__}, {torch.get_num_threads()} threads"


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def nvidia_gpus() -> list[str]:
    """Names of the local NVIDIA GPUs (empty when there are none or no driver)."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20, check=True).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def probe_host() -> HostProbe:
    """Measure this machine (a few seconds). Raises ProbeError when a measurement cannot run."""
    start = time.perf_counter()
    name, vendor, flags = _cpuinfo()
    try:
        ram, available = _memory()
        bandwidth = measure_bandwidth()
        gflops, backend = measure_matmul()
    except (OSError, ValueError, MemoryError, KeyError) as error:
        raise ProbeError(f"the host probe could not run: {type(error).__name__}: {error}") from None
    return HostProbe(cpu_name=name, vendor=vendor, logical_cores=os.cpu_count() or 1, ram_bytes=ram,
                     available_bytes=available, bandwidth_gbps=bandwidth, matmul_gflops=gflops,
                     matmul_backend=backend, cpu_flags=flags, gpus=nvidia_gpus(),
                     seconds=time.perf_counter() - start)


def host_entry(probe: HostProbe, name: str | None = None) -> Accelerator:
    """The probed host CPU as a catalog entry."""
    gflops = probe.matmul_gflops
    bf16_native = any(flag in probe.cpu_flags for flag in ("avx512_bf16", "amx_bf16"))
    date = _dt.date.today().isoformat()
    measured = ", ".join(f"{k} {v:,.0f} GFLOPS" for k, v in gflops.items())
    return Accelerator(
        name=name or f"Host CPU ({probe.cpu_name}, {probe.logical_cores} threads)",
        vendor=probe.vendor, architecture=f"{probe.cpu_name} (host CPU)",
        memory_gb=round(probe.ram_bytes / 2**30, 2), memory_usable_gib=round(probe.available_bytes / 2**30, 2),
        memory_usable_basis=f"probed: MemAvailable on {date} (other processes use the rest)",
        memory_type="host DRAM", memory_kind="unified",
        memory_bandwidth_gbps=round(probe.bandwidth_gbps, 2),
        fp32_tflops=_tflops(gflops, "fp32"), bf16_tflops=_tflops(gflops, "bf16"), fp16_tflops=_tflops(gflops, "fp16"),
        supports_bf16=bf16_native, supports_fp8=False, supports_fp4=False, supports_sparse_2_4=False,
        form_factor="host CPU (probed)", gpus_per_node=1,
        source=(f"fitplan hardware probe on {date}: {BANDWIDTH_BYTES // 2**20} MiB array copy "
                f"{probe.bandwidth_gbps:,.1f} GB/s (read + write), {MATMUL_N}x{MATMUL_N} matmul {measured} "
                f"({probe.matmul_backend}); {probe.logical_cores} logical cores"),
        notes=("Caveat: measured, not a datasheet peak; a busy machine measures low. "
               + (f"NVIDIA GPUs seen: {', '.join(probe.gpus)}." if probe.gpus else "No NVIDIA GPU seen.")),
        verified=False)


def _tflops(gflops: dict[str, float], dtype: str) -> float | None:
    return float(f"{gflops[dtype] / 1e3:.4g}") if dtype in gflops else None


def entry_toml(entry: Accelerator) -> str:
    """A user hardware file (``FITPLAN_HARDWARE``) holding ``entry``."""
    lines = ["# fitplan user hardware file, written by `fitplan hardware probe`", "schema_version = 1", "",
             "[[accelerator]]"]
    for key, value in entry.model_dump(exclude_defaults=True).items():
        if value is None or key == "is_generic":
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def user_hardware_dir() -> Path:
    """Where ``--save`` writes: ``$XDG_CONFIG_HOME/fitplan/hardware`` (``~/.config/fitplan/hardware``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fitplan" / "hardware"


def save_entry(entry: Accelerator, target: str | Path) -> Path:
    """Write ``entry`` as a user hardware file: ``target`` is a path ending in .toml or a name saved under
    ``user_hardware_dir()``. Never overwrites an existing file."""
    path = Path(target)
    if path.suffix != ".toml":
        path = user_hardware_dir() / f"{path.name}.toml"
    if path.exists():
        raise ProbeError(f"{path} exists; choose another name or delete it first (a saved probe is never overwritten)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(entry_toml(entry), encoding="utf-8")
        tmp.replace(path)
    except OSError as error:
        raise ProbeError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def cache_path() -> Path:
    """``$FITPLAN_CACHE_DIR/host.toml``, else ``$XDG_CACHE_HOME/fitplan/host.toml`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "host.toml"
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "fitplan" / "host.toml"


def write_cache(entry: Accelerator) -> Path | None:
    """Cache the probed host (``fitplan hardware probe`` refreshes it); None when it cannot be written."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(entry_toml(entry), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        return None  # the cache is an optimisation: an unwritable cache means probing again next time
    return path


def cached_host_entry() -> Accelerator:
    """The probed host, measured once and cached (see ``cache_path``; ``fitplan hardware probe`` refreshes it)."""
    from hardware_db._loader import load_file

    path = cache_path()
    if path.exists():
        return load_file(path)[0]
    entry = host_entry(probe_host())
    write_cache(entry)
    return entry

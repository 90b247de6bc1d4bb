"""Describe the machine a run happened on (device, CPU model, library versions)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from executors._imports import package_versions
from executors.result import Environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_environment(device: str, torch: Any = None) -> Environment:
    """``torch`` is passed by callers that have imported it (threads, GPU name); None keeps this light."""
    device_name = cpu_model()
    threads = None
    if torch is not None:
        threads = torch.get_num_threads()
        if device.startswith("cuda"):
            device_name = torch.cuda.get_device_name(torch.device(device))
    return Environment(device=device, device_name=device_name, python=sys.version.split()[0],
                       platform=platform.platform(), cpu_model=cpu_model(), cpu_count=os.cpu_count() or 1,
                       torch_threads=threads, versions=package_versions())


def idle_threads(wanted: int) -> int:
    """Threads for a computation that would use ``wanted``: at most the cores other processes leave idle
    (the cores this process may run on minus the 1-minute load average, rounded), at least 1.

    Why: torch's OpenMP threads meet at a barrier after every parallel operation; when another
    process holds one of the cores, the thread left running spins waiting for the descheduled one.
    On this 2-core machine shared by other jobs, ``fitplan profile`` of the tiny LM took 145 s with
    torch's 2 threads and 25 s with 1 (load ~6, ``benchmarks/profile_speed.py``). The load average
    counts this process too once it has been busy for a while, so inside a long-running process the
    count errs on the side of fewer threads.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return max(1, wanted)
    return max(1, min(wanted, round(cores - load)))

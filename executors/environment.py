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

"""HQQ weight-only quantization (``hqq-int8`` / ``-int4`` / ``-int3`` / ``-int2``, group 64 or a
``-g32`` / ``-g128`` variant) of one Linear, for :mod:`executors.steps.quantize`.

HQQ (Half-Quadratic Quantization, Badri & Shaji 2023, the ``hqq`` package) fits a scale and a zero
point per group of ``group_size`` consecutive weights by a few proximal iterations against the
weight itself: no calibration data, a few seconds on CPU for a small model. The module is
``hqq.core.quantize.HQQLinear`` with ``hqq_base_quant_config(nbits, group_size)`` (axis 1) and the
run's compute dtype; its default PYTORCH backend dequantizes the weight on every call and runs a
dense matmul, so it works on any device torch runs on. Its ``state_dict`` holds exactly what the
format registry's entries describe (planner/data/formats.toml, ``[formats.hqq-*]``), so the measured
bytes equal the predicted ones.

Why HQQ: it is the one maintained library here that covers 8, 4, 3 and 2 bits with a group size, on
CPU, without calibration. bitsandbytes stores 8 and 4 bits only; GPTQ/AWQ need calibration passes and
CUDA kernels; torchao's int4 weight-only path targets CUDA/XPU layouts and its sub-4-bit "uintx"
layouts are prototypes; optimum-quanto has no 3-bit weights.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from torch import nn

from planner.errors import UnsupportedError
from planner.formats import get_format
from planner.formats.storage import packing_problem

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def is_hqq_format(fmt: str) -> bool:
    return fmt.startswith("hqq-")


def _hqq() -> Any:
    """``hqq.core.quantize``, or one clear error naming the package to install."""
    try:
        # hqq prints backend notices to stdout; its torch.compile'd kernels warn about torch.jit
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*is deprecated.*")
            from hqq.core import quantize
    except ImportError as error:
        from executors._imports import ExecExtraMissingError

        raise ExecExtraMissingError('HQQ formats need the hqq package: from a fitplan checkout, pip install ".[exec]" '
                                    "(or pip install hqq)") from error
    return quantize


def check_hqq_sites(sites: list[tuple[str, nn.Module, str]]) -> None:
    """Refuse, before any work, when an HQQ format cannot store one of the planned Linears
    (``(name, module, format)`` triples): the same rule the format registry sizes with."""
    problems = []
    for name, module, fmt in sites:
        if not is_hqq_format(fmt):
            continue
        problem = packing_problem(get_format(fmt), module.out_features, module.in_features)
        if problem:
            problems.append(f"{name} ({fmt}): {problem}")
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise UnsupportedError(f"HQQ cannot pack {len(problems)} Linear layer(s): {shown}. Use another group "
                               f"size (-g32 / -g128), another format, or keep those layers unquantized.")
    if any(is_hqq_format(fmt) for _, _, fmt in sites):
        _hqq()


def hqq_linear(linear: nn.Linear, fmt: str, compute: torch.dtype, device: str) -> tuple[nn.Module, dict]:
    """``linear`` quantized by HQQ into an ``HQQLinear`` (bias kept in ``compute``), and its details."""
    quantize = _hqq()
    spec = get_format(fmt)
    config = quantize.hqq_base_quant_config(nbits=int(spec.bits), group_size=spec.group_size)
    source = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    source.weight = nn.Parameter(linear.weight.detach().to(torch.float32), requires_grad=False)
    if linear.bias is not None:
        source.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
    with contextlib.redirect_stdout(io.StringIO()):
        module = quantize.HQQLinear(source, config, compute_dtype=compute, device=str(torch.device(device)),
                                    del_orig=True)
    module.eval()
    detail = {"library": "hqq", "module": "HQQLinear", "nbits": int(spec.bits), "group_size": spec.group_size,
              "axis": config["weight_quant_params"]["axis"], "compute_dtype": DTYPE_NAMES.get(compute, str(compute)),
              "backend": quantize.HQQLinear.backend.value}
    return module, detail

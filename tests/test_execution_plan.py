"""Which quantizations the executors apply at load time (shared by executors and the CPU estimate)."""

from __future__ import annotations

import pytest

from planner.execution import load_time_format, split_load_time_quantization, uses_bitsandbytes
from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec


@pytest.mark.parametrize("spec, expected", [
    (QuantizationSpec(weights="nf4"), "nf4"),
    (QuantizationSpec(weights="int8", compute_dtype="fp32"), "int8"),
    (QuantizationSpec(weights="fp4-dq"), "fp4-dq"),
    (QuantizationSpec(weights="bf16"), "bf16"),
    (QuantizationSpec(weights="bf16", compute_dtype="fp32"), None),  # stored bf16, computed fp32: a step
    (QuantizationSpec(weights="nf4", mlp="int8"), None),
    (QuantizationSpec(weights="nf4", lm_head="int8"), None),
    (QuantizationSpec(weights="nf4", keep_first_layers=1), None),
    (QuantizationSpec(weights="dynamic-int8", compute_dtype="fp32"), None),
    (None, None),
])
def test_load_time_format(spec, expected):
    assert load_time_format(spec) == expected


def test_only_quantization_only_strategies_load_quantized():
    quant = QuantizationSpec(weights="nf4")
    at_load, rest = split_load_time_quantization(CompressionStrategy(quantization=quant))
    assert at_load == quant and rest.is_identity
    mixed = CompressionStrategy(quantization=quant, sparsity=SparsitySpec(level=0.5))
    at_load, rest = split_load_time_quantization(mixed)
    assert at_load is None and rest == mixed
    assert uses_bitsandbytes(mixed) and not uses_bitsandbytes(CompressionStrategy())
    assert uses_bitsandbytes(CompressionStrategy(quantization=QuantizationSpec(weights="bf16", lm_head="int8")))

"""Low-rank factorisation, the step registry and whole strategies applied in order."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import BaseModel

from executors.steps import StepContext, apply_step, apply_strategy, registered_steps
from executors.steps.layout import model_spec
from executors.steps.lowrank import LowRankLinear
from executors.steps.storage import count_params
from planner.errors import UnsupportedError
from planner.models.derive import derive_spec, low_rank_params
from planner.strategy import (
    CompressionStrategy,
    DistillationSpec,
    LowRankSpec,
    QuantizationSpec,
    SparsitySpec,
)
from tests.steps.step_helpers import chunk_source, llama

pytestmark = pytest.mark.exec


def test_low_rank_minilm_matches_the_planner(minilm, fidelity):
    spec = LowRankSpec(rank_ratio=0.5)
    before = model_spec(minilm)
    model, report = apply_step(minilm, spec, StepContext())
    assert count_params(model) == low_rank_params(before, spec) == report.params_after
    up = model.encoder.layer[0].intermediate.dense
    assert isinstance(up, LowRankLinear) and up.rank == 192
    # attention 384x384 at rank 192 does not save parameters (192 * 768 = 384 * 384): kept whole and reported
    assert len(report.modules) == 12  # the two MLP projections of each layer
    assert "would not save parameters" in report.skipped_reasons()["encoder.layer.0.attention.output.dense"]
    assert 0.3 < fidelity(model) < 0.99


def test_low_rank_is_exact_at_full_rank_of_a_low_rank_weight():
    model = llama()
    up = model.model.layers[0].mlp.up_proj
    with torch.no_grad():
        up.weight.copy_(torch.randn(704, 8) @ torch.randn(8, 256))
    x = torch.randn(3, 256)
    expected = up(x)
    model, _ = apply_step(model, LowRankSpec(rank_ratio=0.05, targets="mlp"), StepContext())
    factorised = model.model.layers[0].mlp.up_proj
    assert factorised.rank == 13
    assert torch.allclose(factorised(x), expected, atol=1e-3)


def test_low_rank_then_quantize_quantizes_the_factors():
    strategy = CompressionStrategy(low_rank=LowRankSpec(rank_ratio=0.25), quantization=QuantizationSpec(weights="int8"))
    model, reports = apply_strategy(llama(), strategy, StepContext())
    names = {change.name for change in reports[1].modules}
    assert "model.layers.0.mlp.up_proj.first" in names and "model.layers.0.mlp.up_proj.second" in names
    assert model(input_ids=torch.arange(8).view(1, 8)).logits.shape == (1, 8, 256)


class _NotAStep(BaseModel):
    level: float = 0.5


def test_unregistered_spec_lists_the_registered_ones():
    assert set(registered_steps()) == {DistillationSpec, SparsitySpec, LowRankSpec, QuantizationSpec}
    with pytest.raises(UnsupportedError, match="registered: .*QuantizationSpec"):
        apply_step(llama(), _NotAStep(), StepContext())


def test_strategy_runs_distill_prune_quantize_in_order(byte_ids):
    teacher = llama()
    strategy = CompressionStrategy(
        quantization=QuantizationSpec(weights="nf4", lm_head="int8"),
        sparsity=SparsitySpec(level=0.5, pattern="ffn"),
        distillation=DistillationSpec(depth_ratio=0.5, steps=2, batch_size=2, seq_len=32))
    context = StepContext(batches=chunk_source(byte_ids[0]), calibration_batches=1, calibration_seq_len=32)
    before = model_spec(teacher)
    model, reports = apply_strategy(teacher, strategy, context)
    assert [r.step for r in reports] == ["distillation", "sparsity", "quantization"]
    derived = derive_spec(before, strategy)
    assert reports[1].params_after == derived.params.total
    assert (derived.num_layers, derived.mlp.intermediate_size) == (2, 384)
    assert not any("cpu_kernel" in c.detail for c in reports[2].modules)
    assert reports[2].state_bytes_after < 0.3 * reports[1].state_bytes_after
    logits = model(input_ids=byte_ids[1][:32].view(1, 32)).logits
    assert torch.isfinite(logits).all()
    for report in reports:  # the reports travel as JSON in ExecutionResult
        assert json.loads(report.model_dump_json())["step"] == report.step

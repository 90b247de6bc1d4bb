"""Quantization by module replacement on MiniLM and the tiny Llama: real bytes, real kernels."""

from __future__ import annotations

import pytest
import torch

from executors.steps import StepContext, apply_step
from executors.steps.storage import state_dict_bytes
from planner.errors import InvalidRequestError, UnsupportedError
from planner.strategy import QuantizationSpec
from tests.steps.step_helpers import llama

pytestmark = pytest.mark.exec


def _changes(report):
    return {change.name: change for change in report.modules}


def test_int8_minilm_stores_one_byte_per_weight(minilm, fidelity):
    model, report = apply_step(minilm, QuantizationSpec(weights="int8", compute_dtype="fp32"), StepContext())
    changes = _changes(report)
    assert len(changes) == 36  # 6 layers x (q, k, v, o, up, down)
    query = changes["encoder.layer.0.attention.self.query"]
    # weight int8 (384 x 384) + one fp32 scale per row + 1-byte format tag + fp32 bias
    assert query.bytes_after == 384 * 384 + 4 * 384 + 1 + 4 * 384
    assert query.bytes_before == 4 * (384 * 384 + 384)
    up = changes["encoder.layer.0.intermediate.dense"]
    assert up.bytes_after == 1536 * 384 + 4 * 1536 + 1 + 4 * 1536
    assert up.bytes_after / up.bytes_before < 0.255
    assert report.skipped_reasons()["pooler.dense"].startswith("outside the transformer blocks")
    assert report.state_bytes_after == state_dict_bytes(model)
    assert fidelity(model) > 0.995


def test_nf4_minilm_with_bf16_rest(minilm, fidelity):
    model, report = apply_step(minilm, QuantizationSpec(weights="nf4"), StepContext())
    up = _changes(report)["encoder.layer.0.intermediate.dense"]
    assert up.detail["quant_type"] == "nf4" and "cpu_kernel" not in up.detail
    weights = 384 * 1536
    # packed 4-bit weight + one fp32 absmax per 64 values + 16-entry fp32 code book + bf16 bias + packed state
    fixed = weights // 2 + weights // 64 * 4 + 16 * 4 + 2 * 1536
    assert fixed < up.bytes_after < fixed + 128
    # word embeddings (30522 x 384) stay unquantized but move to bf16 with the rest
    assert report.state_bytes_after < 0.35 * report.state_bytes_before
    assert 0.95 < fidelity(model) < 0.995


def test_double_quant_is_smaller_than_plain_nf4(minilm):
    _, plain = apply_step(minilm, QuantizationSpec(weights="nf4", compute_dtype="fp32"), StepContext())
    _, double = apply_step(llama(), QuantizationSpec(weights="nf4-dq", compute_dtype="fp32"), StepContext())
    name = "model.layers.0.mlp.up_proj"
    up = _changes(double)[name]
    weights = 256 * 704
    assert up.bytes_after < weights // 2 + weights // 64 * 4  # absmax stored in 8 bits + second-level scales
    assert _changes(plain)["encoder.layer.0.intermediate.dense"].detail["double_quant"] is False


def test_widths_the_4bit_kernel_cannot_take_are_reported_and_run():
    model = llama(intermediate_size=688)
    model, report = apply_step(model, QuantizationSpec(weights="nf4", lm_head="nf4"), StepContext())
    changes = _changes(report)
    slow = {name for name, change in changes.items() if "cpu_kernel" in change.detail}
    # gate/up have 688 outputs (not % 32), down has 688 inputs (not % 64); attention and lm_head are fine
    assert slow == {f"model.layers.{i}.mlp.{p}" for i in range(4) for p in ("gate_proj", "up_proj", "down_proj")}
    assert any("slow" in note or "dequantize" in note for note in report.notes)
    logits = model(input_ids=torch.arange(16).view(1, 16)).logits
    assert torch.isfinite(logits).all()


def test_groups_keep_layers_and_lm_head():
    spec = QuantizationSpec(weights="int8", attention="nf4", keep_first_layers=1, keep_format="bf16", lm_head="int8")
    model, report = apply_step(llama(), spec, StepContext())
    actions = {name: change.action for name, change in _changes(report).items()}
    assert actions["model.layers.0.self_attn.q_proj"] == "bf16"
    assert actions["model.layers.0.mlp.up_proj"] == "bf16"
    assert actions["model.layers.1.self_attn.q_proj"] == "nf4"
    assert actions["model.layers.1.mlp.up_proj"] == "int8"
    assert actions["lm_head"] == "int8"
    assert model(input_ids=torch.arange(8).view(1, 8)).logits.shape == (1, 8, 256)


def test_mixed_dense_dtypes_cast_activations():
    spec = QuantizationSpec(weights="bf16", mlp="fp16", compute_dtype="fp32")
    model, report = apply_step(llama(), spec, StepContext())
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert model(input_ids=torch.arange(8).view(1, 8)).logits.dtype == torch.float32


def test_dynamic_int8_per_channel():
    reference = llama()
    ids = torch.arange(32).view(2, 16)
    expected = reference(input_ids=ids).logits
    model, report = apply_step(llama(), QuantizationSpec(weights="dynamic-int8", compute_dtype="fp32"), StepContext())
    up = _changes(report)["model.layers.0.mlp.up_proj"]
    assert up.detail["qscheme"] == "per_channel_affine"
    # int8 weights + a float64 scale and an int64 zero point per output channel + the module's output
    # scale (fp32) and zero point (int64); Llama projections have no bias
    assert up.bytes_after == 256 * 704 + 704 * 16 + 4 + 8
    got = model(input_ids=ids).logits
    assert ((got - expected).norm() / expected.norm()) < 0.1


def test_dynamic_int8_needs_fp32_compute():
    with pytest.raises(InvalidRequestError, match="compute_dtype='fp32'"):
        apply_step(llama(), QuantizationSpec(weights="dynamic-int8"), StepContext())


@pytest.mark.parametrize(("fmt", "reason"), [("fp8", "no fp8 weight module"), ("gptq-int4", "gptqmodel"),
                                             ("awq-int4", "autoawq")])
def test_formats_that_cannot_run_here_raise(fmt, reason):
    with pytest.raises(UnsupportedError, match=reason):
        apply_step(llama(), QuantizationSpec(weights="int8", mlp=fmt), StepContext())


def test_quantized_embeddings_are_refused():
    with pytest.raises(UnsupportedError, match="Embedding8bit"):
        apply_step(llama(), QuantizationSpec(weights="int8", embeddings="int8"), StepContext())

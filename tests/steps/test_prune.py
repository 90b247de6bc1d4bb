"""Pruning on MiniLM and the tiny Llama: exact zero counts, valid N:M, real structural shrinking."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass,
    sparse_semi_structured_to_dense_cutlass,
)

from executors.steps import StepContext, apply_step, apply_strategy
from executors.steps.layout import model_spec
from executors.steps.masks import is_valid_nm
from executors.steps.storage import count_params, semi_structured_bytes
from planner.errors import InvalidRequestError, UnsupportedError
from planner.models.derive import derive_spec
from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec
from tests.steps.step_helpers import chunk_source, llama

pytestmark = pytest.mark.exec


def _block_weights(model):
    layers = model.model.layers if hasattr(model, "model") else model.encoder.layer
    return {name: module.weight for name, module in layers.named_modules() if isinstance(module, torch.nn.Linear)}


def _context(ids, **kwargs):
    return StepContext(batches=chunk_source(ids), calibration_batches=2, calibration_batch_size=2,
                       calibration_seq_len=32, **kwargs)


def _hooks(model):
    # transformers itself may install output-recording hooks once a model has run: count, do not assume none
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_per_layer_magnitude_leaves_exactly_half_zeros_and_no_masks(minilm):
    hooks = _hooks(minilm)
    model, report = apply_step(minilm, SparsitySpec(level=0.5), StepContext())
    weights = _block_weights(model)
    assert len(weights) == 36
    for weight in weights.values():
        assert int((weight == 0).sum()) == weight.numel() // 2
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())
    assert _hooks(model) == hooks
    skipped = report.skipped_reasons()
    assert "pooler.dense" in skipped and "embeddings.word_embeddings" in skipped
    assert report.zeros_after - report.zeros_before == sum(w.numel() // 2 for w in weights.values())
    assert report.params_after == report.params_before
    assert len(report.modules) == 36 and report.modules[0].action == "weight 50.0% zeros"


def test_global_magnitude_counts_over_all_layers():
    model, _ = apply_step(llama(), SparsitySpec(level=0.3, scope="global"), StepContext())
    weights = _block_weights(model)
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == round(0.3 * total)
    assert len({round(float((w == 0).float().mean()), 3) for w in weights.values()}) > 1
    assert int((model.lm_head.weight == 0).sum()) == 0


def test_wanda_prunes_half_of_every_row_and_beats_magnitude(_minilm, minilm_ids, fidelity):
    magnitude, _ = apply_step(copy.deepcopy(_minilm), SparsitySpec(level=0.5), StepContext())
    hooks = _hooks(_minilm)
    wanda, _ = apply_step(copy.deepcopy(_minilm), SparsitySpec(level=0.5, method="wanda"), _context(minilm_ids[0]))
    assert _hooks(wanda) == hooks  # the calibration hooks are removed
    for name, weight in _block_weights(wanda).items():
        assert ((weight == 0).sum(1) == weight.shape[1] // 2).all(), name
    assert not torch.equal(_block_weights(wanda)["0.attention.self.query"] == 0,
                           _block_weights(magnitude)["0.attention.self.query"] == 0)
    assert fidelity(wanda) > fidelity(magnitude)


def test_wanda_needs_calibration_data():
    with pytest.raises(InvalidRequestError, match="StepContext.batches is None"):
        apply_step(llama(), SparsitySpec(level=0.5, method="wanda"), StepContext())


@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_masks_are_valid(pattern, n, m, byte_ids):
    model, report = apply_step(llama(), SparsitySpec(level=0.5, pattern=pattern, method="wanda"),
                               _context(byte_ids[0]))
    for name, weight in _block_weights(model).items():
        assert is_valid_nm(weight, n, m), name
        assert int((weight == 0).sum()) == weight.numel() // 2
    dense = report.storage["pruned_weights_dense_16bit_bytes"]
    sparse = next(v for k, v in report.storage.items() if k.endswith("_16bit_bytes") and "dense" not in k)
    assert sparse / dense == pytest.approx(9 / 16)
    assert any("speed unchanged" in note for note in report.notes)


@pytest.mark.parametrize(("dtype", "ratio"), [(torch.float16, 9 / 16), (torch.bfloat16, 9 / 16), (torch.int8, 10 / 16)])
def test_semi_structured_size_matches_pytorchs_conversion(dtype, ratio):
    model, _ = apply_step(llama(), SparsitySpec(level=0.5, pattern="2:4"), StepContext())
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    dense = (weight * 100).to(dtype)
    packed, meta = sparse_semi_structured_from_dense_cutlass(dense)
    assert torch.equal(sparse_semi_structured_to_dense_cutlass(packed, meta), dense)
    real = packed.numel() * packed.element_size() + meta.numel() * meta.element_size()
    rows, cols = weight.shape
    assert semi_structured_bytes(rows, cols, dense.element_size()) == real
    assert real / (dense.numel() * dense.element_size()) == ratio


def _check_structural(model, spec_before, strategy, report, ids):
    derived = derive_spec(spec_before, strategy, kept_layers=report.structure.get("kept_layers"))
    assert count_params(model) == derived.params.total == report.params_after < report.params_before
    assert model_spec(model).params == derived.params
    with torch.no_grad():
        model(input_ids=ids)
    return derived


@pytest.mark.parametrize("pattern", ["heads", "ffn", "layers"])
def test_structured_llama_matches_derive_spec_and_reloads(pattern, byte_ids, tmp_path):
    model = llama()
    before = model_spec(model)
    spec = SparsitySpec(level=0.5, pattern=pattern)
    model, report = apply_step(model, spec, _context(byte_ids[0]))
    ids = byte_ids[1][:64].view(2, 32)
    derived = _check_structural(model, before, CompressionStrategy(sparsity=spec), report, ids)
    expected = {"heads": (2, 1, 704, 4), "ffn": (4, 2, 352, 4), "layers": (4, 2, 704, 2)}[pattern]
    assert (derived.num_heads, derived.num_kv_heads, derived.mlp.intermediate_size, derived.num_layers) == expected
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen3", "gemma2", "mistral"])
def test_structured_pruning_of_other_llama_like_families(model_type, byte_ids):
    extra = {"qwen3": {"attention_bias": False}, "gemma2": {"head_dim": 64}, "mistral": {"sliding_window": 64}}
    config = transformers.AutoConfig.for_model(model_type, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=256, vocab_size=256,
                                               **extra[model_type])
    torch.manual_seed(0)
    ids = byte_ids[1][:64].view(2, 32)
    for pattern in ("heads", "ffn", "layers"):
        model = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config)).eval()
        before = model_spec(model)
        spec = SparsitySpec(level=0.5, pattern=pattern)
        model, report = apply_step(model, spec, _context(byte_ids[0]))
        _check_structural(model, before, CompressionStrategy(sparsity=spec), report, ids)


@pytest.mark.parametrize("pattern", ["ffn", "layers"])
def test_structured_minilm_matches_derive_spec(pattern, minilm, minilm_ids, tmp_path):
    before = model_spec(minilm)
    spec = SparsitySpec(level=0.5, pattern=pattern)
    model, report = apply_step(minilm, spec, _context(minilm_ids[0]))
    derived = _check_structural(model, before, CompressionStrategy(sparsity=spec), report, minilm_ids[1][:64].view(2, 32))
    assert (derived.mlp.intermediate_size, derived.num_layers) == {"ffn": (768, 6), "layers": (1536, 3)}[pattern]
    model.save_pretrained(tmp_path)
    assert count_params(transformers.AutoModel.from_pretrained(tmp_path)) == derived.params.total


def test_minilm_heads_cannot_be_pruned(minilm):
    with pytest.raises(UnsupportedError, match="hidden_size / num_attention_heads"):
        apply_step(minilm, SparsitySpec(level=0.5, pattern="heads"), StepContext())


def test_ffn_width_stays_a_multiple_of_64_before_4bit(byte_ids):
    model = llama()
    before = model_spec(model)
    strategy = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="ffn"),
                                   quantization=QuantizationSpec(weights="nf4"))
    model, reports = apply_strategy(model, strategy, _context(byte_ids[0]))
    assert model.config.intermediate_size == 384 == derive_spec(before, strategy).mlp.intermediate_size
    assert not [c.name for c in reports[1].modules if "cpu_kernel" in c.detail and ".mlp." in c.name]
    assert any("multiple of 64" in note for note in reports[0].notes)


def test_gradual_schedule_keeps_the_best_state_above_the_threshold(minilm, fidelity):
    spec = SparsitySpec(level=0.8, gradual_steps=4, max_quality_drop=0.05)
    model, report = apply_step(minilm, spec, StepContext(evaluator=fidelity))
    prune_steps = report.history
    # 20% of MiniLM's weights cost ~3% fidelity, 40% ~13% (no fine-tuning): the schedule stops at 0.4
    assert [(h["level"], h["accepted"]) for h in prune_steps] == [(0.2, True), (0.4, False)]
    reached = report.metrics["level_reached"]
    assert reached == 0.2
    for weight in _block_weights(model).values():
        assert int((weight == 0).sum()) == round(reached * weight.numel())
    assert fidelity(model) >= 0.95 * report.metrics["quality_before"]
    assert any("max_quality_drop" in note for note in report.notes)


def test_gradual_fine_tuning_keeps_pruned_weights_at_zero(tiny_lm, tiny_lm_ids):
    spec = SparsitySpec(level=0.5, gradual_steps=2, finetune_steps=2)
    model, report = apply_step(tiny_lm, spec, _context(tiny_lm_ids[0]))
    for weight in _block_weights(model).values():
        assert int((weight == 0).sum()) == weight.numel() // 2
    assert [h["level"] for h in report.history] == [0.25, 0.5]
    assert all(len(h["finetune"]) == 2 and h["finetune"][-1]["step"] == 2 for h in report.history)


def test_nm_cannot_be_gradual():
    with pytest.raises(InvalidRequestError, match="gradual_steps must be 1"):
        apply_step(llama(), SparsitySpec(level=0.5, pattern="2:4", gradual_steps=2), StepContext())


def test_gradual_layer_pruning_tracks_the_original_indices(byte_ids):
    model = llama()
    before = model_spec(model)
    spec = SparsitySpec(level=0.5, pattern="layers", gradual_steps=2)
    model, report = apply_step(model, spec, _context(byte_ids[0]))
    kept = report.structure["kept_layers"]
    assert len(kept) == 2 and kept == sorted(kept) and set(kept) <= {0, 1, 2, 3}
    assert [h["level"] for h in report.history] == [0.25, 0.5]
    assert count_params(model) == derive_spec(before, CompressionStrategy(sparsity=spec), kept_layers=kept).params.total
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]


def test_a_level_the_stop_rule_rejects_leaves_the_kept_layers_of_the_accepted_one(byte_ids):
    """Quality = number of blocks: the second step (2 of 4 blocks, a 50% drop) breaks max_quality_drop 0.3 and
    is undone; the report and the later steps see the 3 blocks the model has."""
    model = llama()
    spec = SparsitySpec(level=0.5, pattern="layers", gradual_steps=2, max_quality_drop=0.3)
    context = _context(byte_ids[0], evaluator=lambda m: float(len(m.model.layers)))
    model, report = apply_step(model, spec, context)
    assert [h["accepted"] for h in report.history] == [True, False]
    assert len(model.model.layers) == 3
    assert len(report.structure["kept_layers"]) == 3 and context.kept_layers == report.structure["kept_layers"]

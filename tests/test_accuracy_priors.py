"""Each sourced prior row is reproduced by its fitted rule; the rules have the published shape."""

from __future__ import annotations

import math

import pytest

from planner.accuracy import predict_quality
from planner.accuracy.parts import format_damage, model_facts
from planner.accuracy.priors import load_priors, t90
from planner.models import get_model
from planner.strategy import CompressionStrategy, DistillationSpec, LowRankSpec, QuantizationSpec, SparsitySpec

PRIORS = load_priors()
POINT_ROWS = [r for r in PRIORS.data.rows if r.kind == "point" and r.fit]


@pytest.mark.parametrize("row", POINT_ROWS, ids=[r.id for r in POINT_ROWS])
def test_row_reproduced(row):
    """The cited value lies in the rule's 95% interval (the row's resolution included), or within half a
    percentage point of the prediction (near-lossless rows, whose log-spread is tiny). A cited gain
    (> 100%) counts as 100%: the model never predicts an improvement."""
    predicted, low80, _ = PRIORS.predict_row(row, include_row_noise=True)
    cited = min(row.cited_retained_pct, 100.0)
    scale = PRIORS.metric_scale(row.metric)

    def damage(pct: float) -> float:
        return max(-math.log(pct / 100) / scale, 1e-4)

    half_width80 = math.log(damage(low80) / damage(predicted))
    inside95 = abs(math.log(damage(cited) / damage(predicted))) <= half_width80 * 1.96 / 1.2816
    assert inside95 or abs(predicted - cited) <= 0.5, (row.id, cited, predicted)


def test_every_row_has_a_public_source():
    for row in PRIORS.data.rows:
        assert row.source and "../shared" not in row.source and "COMPRESSION_PRIORS.md section" not in row.source


def test_bound_rows_hold():
    for row in (r for r in PRIORS.data.rows if r.kind == "bound"):
        predicted, _, _ = PRIORS.predict_row(row)
        assert predicted >= row.retained_min_pct, row.id


def test_unfitted_finetuned_row_is_above_the_one_shot_prediction():
    """HPC-AI: 2:4 one-shot then fine-tuned (tokens not stated): recovered quality beats the one-shot
    prior."""
    row = next(r for r in PRIORS.data.rows if r.id == "hpcai-llama3-8b-2of4-sparsegpt-finetuned")
    predicted, _, _ = PRIORS.predict_row(row)
    assert row.cited_retained_pct > predicted


@pytest.fixture(scope="module")
def specs():
    return {name: get_model(name) for name in ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-2-7b-hf",
                                               "meta-llama/Llama-2-70b-hf")}


def q(fmt: str) -> CompressionStrategy:
    return CompressionStrategy(quantization=QuantizationSpec(weights=fmt))


def test_three_bits_and_below_degrade_sharply(specs):
    """Dettmers & Zettlemoyer / Huang et al.: 4 bits near-lossless, 3 bits clear loss, 2 bits collapse."""
    spec = specs["meta-llama/Llama-2-7b-hf"]
    r = {fmt: predict_quality(spec, q(fmt), metric="perplexity").retained_pct for fmt in ("gptq-int8", "gptq-int4")}
    assert r["gptq-int8"] > r["gptq-int4"]
    c = PRIORS.rules["quantization"].coefficients()
    assert c["slope"] < 0 and c["extra_low"] < 0  # steeper below 4 bits than above
    facts = model_facts(spec, PRIORS)
    loss = {fmt: format_damage(fmt, facts, PRIORS, []).median for fmt in ("hqq-int8", "hqq-int4", "hqq-int3", "hqq-int2")}
    per_bit_above = (loss["hqq-int4"] / loss["hqq-int8"]) ** 0.25
    assert loss["hqq-int3"] / loss["hqq-int4"] > per_bit_above  # the 4 -> 3 bit step costs more than any above
    assert loss["hqq-int2"] / loss["hqq-int3"] > per_bit_above
    assert 100 * math.exp(-loss["hqq-int2"]) < 80  # 2 bits: perplexity collapses
    assert 100 * math.exp(-loss["hqq-int4"]) > 94  # 4 bits: near-lossless


def test_over_trained_models_are_more_fragile(specs):
    """Same architecture, more pretraining tokens per parameter -> more damage (Kumar et al.)."""
    spec = specs["meta-llama/Llama-2-7b-hf"]
    few = predict_quality(spec, q("nf4"), training_tokens=0.3e12).retained_pct
    many = predict_quality(spec, q("nf4"), training_tokens=15e12).retained_pct
    assert many < few


def test_sparsity_and_structure_shapes(specs):
    spec = specs["meta-llama/Llama-2-7b-hf"]
    sp = {lvl: predict_quality(spec, CompressionStrategy(sparsity=SparsitySpec(level=lvl, method="wanda")))
          .retained_pct for lvl in (0.3, 0.5, 0.7)}
    assert sp[0.3] > sp[0.5] > sp[0.7]
    two_four = predict_quality(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="2:4",
                                                                               method="wanda"))).retained_pct
    assert two_four < sp[0.5]
    magnitude = predict_quality(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.5))).retained_pct
    assert magnitude < sp[0.5]
    depth = {r: predict_quality(spec, CompressionStrategy(distillation=DistillationSpec(depth_ratio=r)))
             .retained_pct for r in (0.75, 0.5)}
    assert depth[0.75] > depth[0.5]
    trained = predict_quality(spec, CompressionStrategy(distillation=DistillationSpec(
        depth_ratio=0.5, steps=100_000, batch_size=256, seq_len=4096))).retained_pct
    assert trained > depth[0.5]
    rank = {k: predict_quality(spec, CompressionStrategy(low_rank=LowRankSpec(rank_ratio=k))).retained_pct
            for k in (0.9, 0.5)}
    assert rank[0.9] > rank[0.5]


def test_t_quantile():
    assert t90(math.inf) == pytest.approx(1.2816, abs=1e-4)
    assert t90(30) == pytest.approx(1.3104, abs=2e-3)
    assert t90(5) == pytest.approx(1.4759, abs=5e-3)


def test_accuracy_scale_is_its_cited_derivation():
    """Task-accuracy log-loss / perplexity log-loss of the same GGUF formats (Q2_K vs Q4_K_M): Qwen3-8B
    10-task average 0.6075 / 0.6308 (intel/auto-round) over LLaMA-1-7B perplexity +0.8698 / +0.0535 on
    F16 5.9 (llama.cpp QUANT_OPTIONS)."""
    accuracy_loss = -math.log(0.6075 / 0.6308)
    perplexity_loss = math.log((5.9 + 0.8698) / (5.9 + 0.0535))
    assert PRIORS.metric_scale("accuracy") == pytest.approx(accuracy_loss / perplexity_loss, abs=0.005)
    assert PRIORS.metric_scale("perplexity") == 1.0


def test_smaller_models_are_more_fragile(specs):
    """Same family and pretraining tokens (Llama 2, 2T): the 7B model loses more than the 70B."""
    small = predict_quality(specs["meta-llama/Llama-2-7b-hf"], q("nf4")).retained_pct
    large = predict_quality(specs["meta-llama/Llama-2-70b-hf"], q("nf4")).retained_pct
    assert small < large


def test_pretraining_tokens_table_matches_names():
    assert PRIORS.pretraining_tokens("meta-llama/Llama-3.2-1B", "llama")[0] == 9e12
    assert PRIORS.pretraining_tokens("meta-llama/Llama-3.1-8B", "llama")[0] == 15e12
    assert PRIORS.pretraining_tokens("meta-llama/Llama-2-7b-hf", "llama")[0] == 2e12
    assert PRIORS.pretraining_tokens("some/unknown-model", "unknown")[0] is None


def test_every_strategy_format_has_a_prediction(specs):
    """Every weight format a strategy may name gets a finite prediction (its own prior, or the
    bits + group-size fallback with a note); lossless floats predict exactly 100%."""
    from planner.strategy import WEIGHT_FORMATS

    spec = specs["meta-llama/Llama-3.1-8B"]
    for fmt in WEIGHT_FORMATS:
        p = predict_quality(spec, q(fmt))
        assert 0 < p.low_pct <= p.retained_pct <= p.high_pct <= 100, fmt
        if fmt in ("fp32", "fp16", "bf16"):
            assert p.retained_pct == 100.0
        elif PRIORS.quant_format(fmt) is None:
            assert any("no specific prior" in n for n in p.notes), fmt

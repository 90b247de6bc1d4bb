"""planner.plan: derived models, sparse storage, feasibility, nearest misses, relaxations, profiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.formats import get_format
from planner.models import get_model
from planner.models.derive import derive_spec
from planner.planning import Constraints, Grid, evaluate_candidate, plan
from planner.planning.limits import LIMITS
from planner.planning.sparse_storage import (
    bitmask_break_even,
    bitmask_bytes,
    kernel_2_4,
    semi_structured_bytes,
    sparse_storage,
)
from planner.strategy import CompressionStrategy, DistillationSpec, QuantizationSpec, SparsitySpec

MODEL = "meta-llama/Llama-3.1-8B"
SEED = {"max_memory_gb": 16, "max_accuracy_loss": 5, "min_speedup": 1.5, "deployment_target": "cloud_inference"}
SMALL_GRID = Grid(formats=("bf16", "fp8", "int8", "nf4", "gptq-int4", "awq-int4"), kv_dtypes=("fp8", "int8"),
                  sparsity=(None, ("2:4", 0.5, "wanda"), ("unstructured", 0.5, "wanda"), ("layers", 0.25, "magnitude")),
                  depth_ratios=(1.0, 0.5), width_ratios=(1.0,))


@pytest.fixture(scope="module")
def llama8b():
    return get_model(MODEL)


# -- derived models ---------------------------------------------------------------------------

def test_half_depth_student_of_llama_8b(llama8b):
    student = derive_spec(llama8b, CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5)))
    assert student.num_layers == 16
    # Llama-3.1-8B: 8,030,261,248 = 1,050,677,248 outside the blocks (embeddings, lm_head, final norm)
    # + 32 blocks x 218,112,000. Half the blocks: 1,050,677,248 + 16 x 218,112,000.
    assert llama8b.params.total == 8_030_261_248
    assert student.params.total == 1_050_677_248 + 16 * 218_112_000 == 4_540_469_248


def test_candidate_memory_comes_from_the_derived_model(llama8b):
    constraints = Constraints(gpu="RTX 4090")
    full = evaluate_candidate(llama8b, CompressionStrategy(quantization=QuantizationSpec(weights="nf4")), constraints)
    half = evaluate_candidate(llama8b, CompressionStrategy(quantization=QuantizationSpec(weights="nf4"),
                                                           distillation=DistillationSpec(depth_ratio=0.5)),
                              constraints)
    assert half.params == 4_540_469_248 and full.params == 8_030_261_248
    assert half.memory_gib < full.memory_gib
    assert half.tokens_per_s > full.tokens_per_s


def test_gpu_memory_after_layer_pruning_reads_per_block_formats_by_original_block(llama8b):
    """A quarter of the 32 blocks pruned (evenly spaced without a profile: blocks 1, 2, 3, 5, ... go, 0 and 31
    stay): an override of a removed block changes nothing, one of a kept block its bytes."""
    from planner.models.derive import evenly_spaced_kept_layers

    constraints = Constraints(gpu="RTX 4090")
    kept = evenly_spaced_kept_layers(32, 24)
    removed = next(b for b in range(32) if b not in kept)
    late = kept[-2]  # kept, and at a lower index in the pruned model

    def memory(block=None):
        overrides = [] if block is None else [{"block": block, "group": "mlp", "format": "fp16"}]
        strategy = CompressionStrategy(sparsity=SparsitySpec(level=0.25, pattern="layers"),
                                       quantization=QuantizationSpec(weights="nf4", block_formats=overrides))
        return evaluate_candidate(llama8b, strategy, constraints).memory_gib

    assert late >= 24 and memory(removed) == memory() < memory(late)


# -- sparse storage -----------------------------------------------------------------------------

def test_two_four_storage_is_half_the_values_plus_two_bit_indices():
    # bf16 4096 x 4096: 4096 x 2048 values x 2 bytes + 2 bits for each of the 8,388,608 kept values.
    assert semi_structured_bytes(get_format("bf16"), 4096, 4096) == 4096 * 2048 * 2 + 4096 * 2048 * 2 / 8
    gptq = get_format("gptq-int4")
    from planner.formats.storage import linear_bytes

    # A quantized format keeps its own group scales on the compressed (out x in/2) matrix.
    assert semi_structured_bytes(gptq, 4096, 4096) == linear_bytes(gptq, 4096, 2048) + 4096 * 4096 / 8


def test_bitmask_storage_and_break_even():
    # bitmask (1 bit/element) + kept values + int32 row offsets.
    assert bitmask_bytes(16, 4096, 4096, 0.5) == 4096 * 4096 / 8 + 4096 * 4096 // 2 * 2 + 4096 * 4
    assert bitmask_break_even(16, 4096) == pytest.approx(1 - 1 / 16 - 32 / (4096 * 16))
    assert bitmask_break_even(8, 4096) == pytest.approx(1 - 1 / 8 - 32 / (4096 * 8))
    # Just below and above the break-even density.
    even = bitmask_break_even(16, 4096)
    assert bitmask_bytes(16, 4096, 4096, even - 0.001) < 4096 * 4096 * 2 < bitmask_bytes(16, 4096, 4096, even + 0.001)


def test_two_four_model_storage_and_where_it_speeds_up(llama8b):
    import hardware_db

    sparsity = SparsitySpec(pattern="2:4", level=0.5, method="wanda")
    bf16 = get_format("bf16")
    hf = sparse_storage(llama8b, bf16, sparsity, engine="hf", acc=hardware_db.get("RTX 4090"))
    # Only block linears are sparse: embeddings and lm_head (2 x 128256 x 4096 bf16) stay dense.
    block = sum(g.params for g in llama8b.param_groups if g.layers and g.kind == "linear")
    assert hf.dense_bytes - hf.stored_bytes == pytest.approx(block * 2 - (block / 2 * 2 + block / 2 * 2 / 8))
    assert hf.resident_bytes == hf.stored_bytes and hf.read_bytes_delta == 0 and not hf.kernel
    assert "memory only" in hf.note
    h100 = sparse_storage(llama8b, bf16, sparsity, engine="vllm", acc=hardware_db.get("H100 SXM"))
    assert h100.kernel and h100.read_bytes_delta == pytest.approx(h100.stored_bytes - h100.dense_bytes)
    ok, why = kernel_2_4(bf16, "vllm", hardware_db.get("A100 80GB SXM"))
    assert not ok and "9.0" in why
    ok, _ = kernel_2_4(get_format("gptq-int4"), "vllm", hardware_db.get("A100 80GB SXM"))
    assert ok
    ok, why = kernel_2_4(get_format("fp16"), "vllm", hardware_db.get("T4"))
    assert not ok and "sparse tensor cores" in why


def test_unstructured_saves_only_on_disk_and_only_past_break_even(llama8b):
    bf16 = get_format("bf16")
    half = sparse_storage(llama8b, bf16, SparsitySpec(pattern="unstructured", level=0.5), engine="vllm")
    assert half.pays and half.storage_format == "sparse-bitmask"
    assert half.stored_bytes < half.dense_bytes and half.resident_bytes == half.dense_bytes
    slight = sparse_storage(llama8b, bf16, SparsitySpec(pattern="unstructured", level=0.05), engine="vllm")
    assert not slight.pays and slight.stored_bytes == slight.dense_bytes
    packed = sparse_storage(llama8b, get_format("nf4"), SparsitySpec(pattern="unstructured", level=0.5), engine="hf")
    assert not packed.pays and packed.stored_bytes == packed.dense_bytes and "packed" in packed.note


def test_unstructured_gives_no_speedup_and_two_four_with_kernel_does(llama8b):
    dense = CompressionStrategy(quantization=QuantizationSpec(weights="bf16"))
    unstructured = CompressionStrategy(quantization=QuantizationSpec(weights="bf16"),
                                       sparsity=SparsitySpec(pattern="unstructured", level=0.5, method="wanda"))
    two_four = CompressionStrategy(quantization=QuantizationSpec(weights="bf16"),
                                   sparsity=SparsitySpec(pattern="2:4", level=0.5, method="wanda"))
    on_h100 = Constraints(gpu="H100 SXM", engine="vllm")
    a, b, c = (evaluate_candidate(llama8b, s, on_h100) for s in (dense, unstructured, two_four))
    assert b.tokens_per_s == a.tokens_per_s and b.memory_gib == a.memory_gib
    assert c.tokens_per_s > a.tokens_per_s and c.memory_gib < a.memory_gib
    on_4090 = Constraints(gpu="RTX 4090", engine="hf")
    d, e = (evaluate_candidate(llama8b, s, on_4090) for s in (dense, two_four))
    assert e.tokens_per_s == d.tokens_per_s and e.memory_gib < d.memory_gib  # memory only


# -- feasibility, misses, relaxations ---------------------------------------------------------------

CONSTRAINT_SETS = [
    SEED,
    {"gpu": "RTX 4090", "max_accuracy_loss": 4, "min_speedup": 1.3, "max_cost_per_1m_tokens": 12},
    {"max_memory_gb": 10, "gpu": "L4", "engine": "vllm", "min_tokens_per_s": 40, "max_cost_per_hour": 1.0},
]


def _check_row(row, constraints: Constraints) -> list[str]:
    """Names of the limits ``row`` breaks, recomputed from its figures."""
    broken = []
    for name, bound in constraints.active_limits().items():
        limit = LIMITS[name]
        value = row[limit.column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            broken.append(name)
        elif (value > bound) if limit.kind == "max" else (value < bound):
            broken.append(name)
    return broken


@pytest.mark.parametrize("raw", CONSTRAINT_SETS)
def test_every_feasible_candidate_satisfies_every_constraint(llama8b, raw):
    constraints = Constraints(**raw)
    result = plan(llama8b, constraints, grid=SMALL_GRID)
    table = result.table("all")
    feasible = table[table["feasible"]]
    assert len(feasible) == result.n_feasible > 0
    for _, row in feasible.iterrows():
        assert _check_row(row, constraints) == [], row["strategy"]
        assert row["fits"] and row["gpus_needed"] == constraints.gpus
    for _, row in table[~table["feasible"]].iterrows():
        assert _check_row(row, constraints), row["strategy"]
    assert list(feasible["rank"]) == list(range(1, len(feasible) + 1))
    # Ranked by the objective (accuracy: predicted loss, ascending).
    assert np.all(np.diff(feasible["loss_pct"].to_numpy()) >= -1e-12)


@pytest.mark.parametrize("raw", CONSTRAINT_SETS)
def test_every_nearest_miss_violates_exactly_what_it_says(llama8b, raw):
    constraints = Constraints(**raw)
    result = plan(llama8b, constraints, grid=SMALL_GRID)
    assert result.nearest_misses
    table = result.table("all")
    for miss in result.nearest_misses:
        said = {v.constraint: v for v in miss.candidate.violations}
        again = evaluate_candidate(llama8b, miss.candidate.strategy, constraints)
        assert {v.constraint for v in again.violations} == set(said)
        row = table[table["strategy"] == miss.candidate.summary].iloc[0]
        assert sorted(_check_row(row, constraints)) == sorted(said)
        for name, violation in said.items():
            limit, bound = LIMITS[name], constraints.active_limits()[name]
            value = row[limit.column]
            assert violation.limit == bound
            assert violation.amount == pytest.approx(value - bound if limit.kind == "max" else bound - value)
            assert violation.amount > 0
        if miss.hint:  # "with KV in fp8 it fits at +0.3% loss": that neighbour is feasible
            assert "it fits" in miss.hint or "it meets every limit" in miss.hint


def test_hint_names_a_feasible_neighbour(llama8b):
    result = plan(llama8b, SEED)
    table = result.table("all")
    hinted = [m for m in result.nearest_misses if m.hint]
    assert hinted
    for miss in hinted:
        row = table[table["strategy"] == miss.candidate.summary].iloc[0]
        words = miss.hint.split(" it ")[0].removeprefix("with ")
        delta = float(miss.hint.rsplit(" at ", 1)[1].split("%")[0])
        feasible = table[table["feasible"]]
        same = feasible[np.isclose(feasible["loss_pct"] - row["loss_pct"], delta, atol=0.051)]
        assert len(same), (miss.hint, words)


def test_seed_lab_constraints_give_a_recommendation(llama8b):
    result = plan(llama8b, SEED)
    assert result.constraints.gpu == "NVIDIA L4" and result.constraints.resolved_engine == "vllm"
    assert result.n_candidates >= 500
    rec = result.recommended
    assert rec is not None and rec.feasible and rec.memory_gib <= 16 and rec.loss_pct <= 5 and rec.speedup >= 1.5
    assert rec.summary == result.table().iloc[0]["strategy"]
    assert result.reason.startswith("highest predicted quality")
    assert CompressionStrategy.from_json(rec.strategy.to_json()) == rec.strategy == result.strategy(1)
    pareto = result.pareto
    assert len(pareto) >= 1 and pareto["feasible"].all()


def test_nothing_feasible_names_the_binding_limit_and_a_working_relaxation(llama8b):
    raw = {"gpu": "RTX 4090", "max_accuracy_loss": 0.5, "min_speedup": 2.5}
    result = plan(llama8b, raw, grid=SMALL_GRID)
    assert result.n_feasible == 0 and result.recommended is None
    assert "binding limit" in result.reason and result.relaxations
    text = result.relaxations[0]
    name = text.split()[1]
    new = float(text.split(" to ")[1].split()[0].rstrip("x%"))
    relaxed = plan(llama8b, {**raw, name: new}, grid=SMALL_GRID)  # the value as printed admits it
    assert relaxed.n_feasible >= 1


def test_profile_changes_the_ranking_the_way_its_numbers_say(llama8b):
    from planner.accuracy import SensitivityProfile, model_fingerprint

    grid = Grid(formats=("bf16", "nf4", "gptq-int4"), kv_dtypes=(), sparsity=(None,), depth_ratios=(1.0,),
                width_ratios=(1.0,))
    constraints = {"gpu": "RTX 4090", "max_memory_gb": 14}
    prior = plan(llama8b, constraints, grid=grid).table()
    assert set(prior["weights"]) == {"nf4", "gptq-int4"}
    first, second = list(prior["weights"])
    # The profile measures the prior's runner-up as nearly lossless and its winner as harmful.
    entries = [{"block": b, "group": g, "option": option, "retained_pct": retained}
               for b in range(llama8b.num_layers) for g in ("attention", "mlp")
               for option, retained in ((second, 99.99), (first, 99.5))]
    profile = SensitivityProfile.model_validate({
        "model": {"name": llama8b.name, "family": llama8b.model_type, "num_blocks": llama8b.num_layers,
                  "fingerprint": model_fingerprint(llama8b.config)},
        "evaluator": {"name": "perplexity", "metric": "perplexity", "metric_family": "perplexity"},
        "entries": entries})
    ranked = plan(llama8b, constraints, grid=grid, profile=profile).table()
    assert list(ranked["weights"]) == [second, first]
    assert set(ranked["basis"]) == {"profile"}
    by = ranked.set_index("weights")["retained_pct"]
    assert by[second] > by[first]


def test_table_columns_and_exports(llama8b, tmp_path):
    import json

    from planner.planning import TABLE_COLUMNS

    result = plan(llama8b, SEED, grid=SMALL_GRID)
    assert list(result.table().columns) == list(TABLE_COLUMNS)
    payload = json.loads(result.to_json())
    assert payload["recommended"]["summary"] == result.recommended.summary
    assert len(payload["candidates"]) == result.n_feasible
    assert result.to_csv().splitlines()[0].split(",") == list(TABLE_COLUMNS)
    assert "## Nearest misses" in result.to_markdown()


def test_unsupported_strategy_is_a_hardware_violation_not_an_exception(llama8b):
    candidate = evaluate_candidate(llama8b, CompressionStrategy(quantization=QuantizationSpec(weights="fp8")),
                                   Constraints(gpu="T4"))
    assert not candidate.supported and not candidate.feasible
    assert candidate.violations[0].constraint == "hardware" and "fp8" in candidate.violations[0].message


def test_grid_only_holds_formats_the_hardware_runs(llama8b):
    result = plan(llama8b, {"gpu": "T4", "max_accuracy_loss": 10}, grid=SMALL_GRID)
    table = result.table("all")
    assert "fp8" not in set(table["weights"]) and "bf16" not in set(table["weights"])
    assert "fp8" in result.excluded_formats and result.baseline["format"] == "fp16"


def test_fine_tuning_mode_plans_memory_only(llama8b):
    result = plan(llama8b, {"gpu": "RTX 4090", "mode": "fine-tuning", "max_accuracy_loss": 5},
                  grid=Grid(formats=("bf16", "nf4", "int8", "gptq-int4"), kv_dtypes=(), sparsity=(None,),
                            depth_ratios=(1.0, 0.5), width_ratios=(1.0,)))
    table = result.table("all")
    assert set(table["weights"]) == {"bf16", "nf4", "int8"}  # gptq has no LoRA/QLoRA path here
    assert table["tokens_per_s"].isna().all()
    assert result.n_feasible >= 1


def test_evaluate_candidate_matches_the_plan_row_and_reuses_its_evaluator(llama8b):
    from planner.planning.candidate import evaluator_for

    constraints = Constraints(**SEED)
    result = plan(llama8b, constraints, grid=SMALL_GRID)
    row = result.table().iloc[0]
    candidate = evaluate_candidate(llama8b, result.strategy(1), constraints)
    assert candidate.summary == row["strategy"] and candidate.feasible
    assert candidate.memory_gib == pytest.approx(row["memory_gib"])
    assert candidate.tokens_per_s == pytest.approx(row["tokens_per_s"])
    assert candidate.loss_pct == pytest.approx(row["loss_pct"])
    assert evaluator_for(llama8b, Constraints(**SEED)) is evaluator_for(llama8b, constraints)


def test_kept_blocks_and_group_formats_are_sized_per_tensor(llama8b):
    from planner.formats.storage import group_storage

    constraints = Constraints(gpu="H100 SXM")
    plain = evaluate_candidate(llama8b, CompressionStrategy(quantization=QuantizationSpec(weights="nf4")), constraints)
    kept = evaluate_candidate(llama8b, CompressionStrategy(quantization=QuantizationSpec(
        weights="nf4", keep_first_layers=2, keep_last_layers=2, keep_format="bf16")), constraints)
    blocks = [g for g in llama8b.param_groups if g.layers]
    extra = sum(group_storage(llama8b, get_format("bf16"), g).bytes - group_storage(llama8b, get_format("nf4"), g).bytes
                for g in blocks) * 4 / llama8b.num_layers
    assert (kept.weights_gib - plain.weights_gib) * 2**30 == pytest.approx(extra, rel=1e-9)
    assert kept.memory_gib > plain.memory_gib and kept.tokens_per_s < plain.tokens_per_s


def test_too_big_for_one_gpu_suggests_the_gpu_count_that_admits_it():
    grid = Grid(formats=("bf16", "nf4", "gptq-int4"), kv_dtypes=(), sparsity=(None,), depth_ratios=(1.0,),
                width_ratios=(1.0,))
    raw = {"gpu": "RTX 4090", "max_accuracy_loss": 3}
    result = plan("meta-llama/Llama-3.1-70B", raw, grid=grid)
    assert result.n_feasible == 0 and result.binding.startswith("max_memory_gb")
    (text,) = [t for t in result.relaxations if t.startswith("use ") and "(gpus=" in t]
    gpus = int(text.split("(gpus=")[1].split(")")[0])
    admitted = text.split(" to admit ")[1].rsplit(" (", 1)[0]
    again = plan("meta-llama/Llama-3.1-70B", {**raw, "gpus": gpus}, grid=grid)
    assert admitted in set(again.table()["strategy"])


def test_per_block_levels_and_formats_are_sized_block_by_block(llama8b):
    from planner.strategy import BlockFormat, BlockSparsity

    bf16 = get_format("bf16")
    every = sparse_storage(llama8b, bf16, SparsitySpec(pattern="2:4", level=0.5), engine="hf")
    half_levels = tuple(BlockSparsity(block=b, group=g, level=0.0) for b in range(16) for g in ("attention", "mlp"))
    half = sparse_storage(llama8b, bf16, SparsitySpec(pattern="2:4", level=0.5, block_levels=half_levels), engine="hf")
    assert half.dense_bytes == every.dense_bytes
    assert half.dense_bytes - half.stored_bytes == pytest.approx((every.dense_bytes - every.stored_bytes) / 2)
    # Eight blocks' MLPs in bf16 inside an nf4 model: exactly their bf16 - nf4 bytes more.
    overrides = tuple(BlockFormat(block=b, group="mlp", format="bf16") for b in range(8))
    constraints = Constraints(gpu="H100 SXM")
    plain = evaluate_candidate(llama8b, CompressionStrategy(quantization=QuantizationSpec(weights="nf4")), constraints)
    mixed = evaluate_candidate(llama8b, CompressionStrategy(
        quantization=QuantizationSpec(weights="nf4", block_formats=overrides)), constraints)
    from planner.formats.storage import group_storage

    mlp = [g for g in llama8b.param_groups if g.layers and g.component == "mlp"]
    extra = sum(group_storage(llama8b, bf16, g).bytes - group_storage(llama8b, get_format("nf4"), g).bytes
                for g in mlp) * 8 / llama8b.num_layers
    assert (mixed.weights_gib - plain.weights_gib) * 2**30 == pytest.approx(extra, rel=1e-9)

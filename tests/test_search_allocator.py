"""search.allocator: the per-block knapsack is exact, stays within budget, and drives a profiled search."""

from __future__ import annotations

import itertools
import math

import pytest

from planner.accuracy.profile import SensitivityProfile, model_fingerprint
from planner.models import get_model
from planner.planning.constraints import Constraints
from search import run_search
from search.allocator import BlockAllocator

TINY = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 3,
        "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096,
        "tie_word_embeddings": False}
FORMATS = ("int8", "nf4", "gptq-int4")


def _profile(spec, sensitive_blocks=(0,), num_blocks=None) -> SensitivityProfile:
    n = num_blocks or spec.num_layers
    entries = []
    for block in range(n):
        for group in ("attention", "mlp"):
            for fmt, retained in (("int8", 99.9), ("nf4", 98.0), ("gptq-int4", 97.0)):
                if block in sensitive_blocks and fmt != "int8":
                    retained -= 10.0
                entries.append({"block": block, "group": group, "option": fmt, "retained_pct": retained})
    return SensitivityProfile(model={"name": spec.name, "family": spec.model_type, "num_blocks": n,
                                     "fingerprint": model_fingerprint(spec.config) if hasattr(spec, "config") else None},
                              evaluator={"name": "perplexity", "metric": "perplexity", "metric_family": "perplexity"},
                              entries=entries)


def test_allocation_is_the_exact_optimum_within_the_budget():
    spec = get_model(TINY)
    allocator = BlockAllocator(spec, _profile(spec), FORMATS)
    n_items = len(allocator.items)
    for bits in (4.3, 5.0, 6.0, 7.5):
        budget = allocator.bytes_for_bits(bits)
        allocation = allocator.allocate(budget)
        assert allocation is not None and allocation.bytes <= budget + 1e-6
        best = math.inf
        for choice in itertools.product(range(len(FORMATS)), repeat=n_items):
            cost = sum(allocator.costs[i, k] for i, k in enumerate(choice))
            if cost <= budget:
                best = min(best, sum(allocator.damages[i, k] for i, k in enumerate(choice)))
        # the budget is discretised (rounded up): optimal up to one resolution step of slack
        assert allocation.damage <= best + 1e-9 or math.isclose(allocation.damage, best, rel_tol=0.02)


def test_sensitive_blocks_keep_more_bits():
    spec = get_model(TINY)
    allocator = BlockAllocator(spec, _profile(spec, sensitive_blocks=(0,)), FORMATS)
    allocation = allocator.allocate(allocator.bytes_for_bits(5.5))
    assert allocation.formats[(0, "attention")] == "int8" and allocation.formats[(0, "mlp")] == "int8"
    assert {allocation.formats[(b, g)] for b in (1, 2) for g in ("attention", "mlp")} <= {"nf4", "gptq-int4"}
    quant = allocator.quantization(allocation, compute_dtype="bf16")
    assert quant.weights in ("nf4", "gptq-int4")
    assert quant.block_format(0, "mlp", spec.num_layers) == "int8"


def test_a_budget_below_the_smallest_format_has_no_allocation():
    spec = get_model(TINY)
    allocator = BlockAllocator(spec, _profile(spec), FORMATS)
    assert allocator.allocate(allocator.bytes_for_bits(2.0)) is None


def test_profile_of_another_model_is_refused():
    spec = get_model(TINY)
    with pytest.raises(Exception, match="blocks"):
        BlockAllocator(spec, _profile(spec, num_blocks=5), FORMATS)


def test_profiled_search_samples_budgets_and_stores_per_block_strategies():
    spec = get_model("meta-llama/Llama-3.1-8B")
    profile = _profile(spec, sensitive_blocks=(0, 31))
    result = run_search(spec.name, Constraints(max_memory_gb=16, max_accuracy_loss=8, gpu="RTX 4090"),
                        profile=profile, n_trials=25, sampler="random", seed=0)
    assert result.n_complete > 0
    assert "profile" in result.request and result.request["space"]["bit_budgets"]
    from planner.strategy import CompressionStrategy

    strategies = [CompressionStrategy.from_json(s) for s in result.table["strategy_json"]]
    overridden = [s for s in strategies if s.quantization is not None and s.quantization.block_formats]
    assert overridden, "some allocations mix formats across blocks"
    assert all(s.version == 2 for s in overridden)
    assert (result.table["basis"].str.startswith("profile")).any()


def test_min_bits_is_the_cheapest_allocation():
    spec = get_model(TINY)
    allocator = BlockAllocator(spec, _profile(spec), FORMATS)
    assert allocator.allocate(allocator.bytes_for_bits(allocator.min_bits() * 0.99)) is None
    assert allocator.allocate(allocator.bytes_for_bits(allocator.min_bits() * 1.01)) is not None


def test_profiled_search_leaves_out_budgets_no_measured_format_reaches():
    """A profile whose smallest format stores ~4.5 bits: the 2.5-4 bit budgets would fail every trial."""
    spec = get_model("meta-llama/Llama-3.1-8B")
    result = run_search(spec.name, Constraints(max_memory_gb=16, max_accuracy_loss=8, gpu="RTX 4090"),
                        profile=_profile(spec), n_trials=20, sampler="random", seed=0)
    floor = BlockAllocator(spec, _profile(spec), FORMATS).min_bits()
    budgets = result.request["space"]["bit_budgets"]
    assert budgets and min(budgets) >= floor > 3.0
    errors = result.trials["error"].dropna()
    assert not errors.str.contains("below the smallest format").any()


def test_distinct_per_block_allocations_never_share_a_summary():
    """Each distinct allocation of a profiled search is its own table row, and its strategy cell must say
    so: the count of overrides, their average bits and a short digest of which block got what."""
    import re

    from planner.strategy import BlockFormat, CompressionStrategy, QuantizationSpec

    spec = get_model("meta-llama/Llama-3.1-8B")
    result = run_search(spec.name, Constraints(max_memory_gb=16, max_accuracy_loss=8, gpu="RTX 4090"),
                        profile=_profile(spec, sensitive_blocks=(0, 31)), n_trials=40, sampler="random", seed=0)
    rows = result.table[result.table["strategy"].str.contains("block formats")]
    assert len(rows) >= 2, "the search proposed several allocations"
    assert rows["strategy"].is_unique  # one row per strategy_json, and no two look alike
    for summary in rows["strategy"]:
        part = summary.split(" | ")[0]  # the quantization part (sparsity may follow)
        found = re.search(r" (\+\d+ block formats avg \d+\.\db #[0-9a-f]{4})$", part)
        assert found, summary
        assert len(found.group(1)) <= 32  # compact: the 80-column tables keep it readable
    # same count and the same formats on other blocks: still two summaries; the order given does not matter
    one = (BlockFormat(block=0, group="mlp", format="int8"), BlockFormat(block=1, group="mlp", format="bf16"))
    other = (BlockFormat(block=2, group="mlp", format="int8"), BlockFormat(block=1, group="mlp", format="bf16"))
    a, b, a_again = (CompressionStrategy(quantization=QuantizationSpec(weights="nf4", block_formats=f)).summary()
                     for f in (one, other, one[::-1]))
    assert a != b and a == a_again and a.startswith("nf4 +2 block formats avg 12.0b #")

"""derive_spec: the planner's picture of a distilled / structurally pruned model (no torch needed).

The torch side is checked in tests/steps/ (real model == derived spec); here: the rules themselves and
the derived specs of registry models, counted again by transformers on the meta device.
"""

from __future__ import annotations

import pytest

from planner.errors import InvalidRequestError, UnsupportedError
from planner.models.derive import (
    derive_spec,
    kept_ffn_width,
    kept_kv_groups,
    kept_layer_count,
    low_rank_params,
    round_half_up,
    student_layer_indices,
)
from planner.models.resolve import registry_spec
from planner.strategy import CompressionStrategy, DistillationSpec, LowRankSpec, QuantizationSpec, SparsitySpec


def test_round_half_up_is_not_bankers_rounding():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49, 3.0)] == [1, 2, 3, 2, 3]


@pytest.mark.parametrize(("layers", "ratio", "expected"), [
    (6, 0.5, [0, 3, 5]), (4, 0.5, [0, 3]), (12, 0.5, [0, 2, 4, 7, 9, 11]), (32, 0.25, [0, 4, 9, 13, 18, 22, 27, 31]),
    (6, 1 / 6, [0]), (6, 1.0, [0, 1, 2, 3, 4, 5]),
])
def test_student_layers_are_evenly_spaced_with_first_and_last(layers, ratio, expected):
    assert student_layer_indices(layers, ratio) == expected


def test_kept_counts():
    assert kept_layer_count(32, 0.25) == 24
    assert kept_layer_count(2, 0.9) == 1
    assert kept_kv_groups(8, 0.5) == 4
    assert kept_kv_groups(2, 0.2) == 2  # 0.4 groups cannot be removed
    assert kept_ffn_width(704, 0.5) == 352
    assert kept_ffn_width(704, 0.5, alignment=64) == 384  # 5.5 blocks of 64 -> 6
    assert kept_ffn_width(688, 1.0, alignment=64) == 640  # never above the largest multiple <= width
    assert kept_ffn_width(14336, 0.3, alignment=64) == 4288
    assert kept_ffn_width(48, 0.5, alignment=64) == 24  # narrower than one block: not aligned


def test_depth_and_width_student_of_llama3_8b():
    spec = registry_spec("meta-llama/Meta-Llama-3-8B")
    student = derive_spec(spec, CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5, width_ratio=0.5)))
    assert student.num_layers == 16
    assert student.mlp.intermediate_size == 7168
    per_layer = spec.layer_params()[0]
    mlp_half = 3 * 4096 * (14336 - 7168)
    assert student.params.total == spec.params.total - 16 * per_layer - 16 * mlp_half


def test_width_is_aligned_when_a_4bit_step_follows():
    spec = registry_spec("meta-llama/Meta-Llama-3-8B")
    plain = derive_spec(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.3, pattern="ffn")))
    four_bit = derive_spec(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.3, pattern="ffn"),
                                                     quantization=QuantizationSpec(weights="nf4")))
    assert plain.mlp.intermediate_size == 10035
    assert four_bit.mlp.intermediate_size == 10048 and four_bit.mlp.intermediate_size % 64 == 0


def test_head_pruning_removes_whole_kv_groups():
    spec = registry_spec("meta-llama/Meta-Llama-3-8B")
    pruned = derive_spec(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="heads")))
    assert (pruned.num_heads, pruned.num_kv_heads, pruned.head_dim) == (16, 4, 128)
    removed_per_layer = 4096 * 16 * 128 * 2 + 4096 * 4 * 128 * 2  # q and o, k and v
    assert pruned.params.total == spec.params.total - 32 * removed_per_layer


def test_layer_pruning_of_mixed_attention_layers_follows_kept_layers():
    spec = registry_spec("google/gemma-2-2b")  # alternating sliding / full attention
    strategy = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers"))
    default = derive_spec(spec, strategy)
    assert default.num_layers == 13
    chosen = derive_spec(spec, strategy, kept_layers=list(range(1, 26, 2)))
    assert set(chosen.attention.layer_types) == {"full_attention"}
    assert chosen.params.total == default.params.total
    with pytest.raises(InvalidRequestError, match="13 distinct indices"):
        derive_spec(spec, strategy, kept_layers=[0, 1])


def test_unsupported_structures_raise():
    with pytest.raises(UnsupportedError, match="hidden_size / num_attention_heads"):
        derive_spec(registry_spec("sentence-transformers/all-MiniLM-L6-v2"),
                    CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="heads")))
    with pytest.raises(UnsupportedError, match="model_type 'mixtral'"):
        derive_spec(registry_spec("mistralai/Mixtral-8x7B-v0.1"),
                    CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="ffn")))
    with pytest.raises(UnsupportedError, match="head size as hidden_size / num_attention_heads"):
        derive_spec(registry_spec("openai-community/gpt2"),
                    CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="heads")))
    with pytest.raises(UnsupportedError, match="encoder-decoder"):
        derive_spec(registry_spec("google-t5/t5-base"),
                    CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5)))


def test_structured_steps_that_remove_nothing_are_refused():
    spec = registry_spec("meta-llama/Meta-Llama-3-8B")  # 32 layers, 8 key/value groups
    with pytest.raises(InvalidRequestError, match="would change nothing"):
        derive_spec(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.01, pattern="layers")))
    with pytest.raises(InvalidRequestError, match="keeps all 8 key/value groups"):
        derive_spec(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.05, pattern="heads")))
    assert derive_spec(spec, CompressionStrategy(sparsity=SparsitySpec(level=0.07, pattern="heads"))).num_kv_heads == 7


def test_shape_preserving_strategies_return_the_same_spec():
    spec = registry_spec("meta-llama/Llama-3.2-1B")
    strategy = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="2:4"), low_rank=LowRankSpec(rank_ratio=0.5),
                                   quantization=QuantizationSpec(weights="nf4"))
    assert derive_spec(spec, strategy) is spec


def test_low_rank_params_of_minilm():
    spec = registry_spec("sentence-transformers/all-MiniLM-L6-v2")
    # attention 384x384 (x4): rank 96 -> 96 * 768 = 73,728 instead of 147,456; MLP 384<->1536: rank 96 ->
    # 96 * 1920 = 184,320 instead of 589,824. Six layers.
    saved = 6 * (4 * (147_456 - 73_728) + 2 * (589_824 - 184_320))
    assert low_rank_params(spec, LowRankSpec(rank_ratio=0.25)) == spec.params.total - saved
    # rank ratio 0.9: 384x384 -> r=346, 346*768 > 147,456: no saving anywhere on attention
    only_attention = LowRankSpec(rank_ratio=0.9, targets="attention")
    assert low_rank_params(spec, only_attention) == spec.params.total


_DECODERS = ["meta-llama/Meta-Llama-3-8B", "Qwen/Qwen3-8B", "google/gemma-2-2b", "mistralai/Mistral-7B-v0.1",
             "microsoft/Phi-3-mini-4k-instruct", "google/gemma-3-4b-pt"]
_NO_HEADS = ["google-bert/bert-base-uncased", "openai-community/gpt2", "facebook/opt-125m", "tiiuae/falcon-7b"]
_CASES = [(name, part) for name in [*_DECODERS, *_NO_HEADS]
          for part in ("depth", "width", "heads", "layers") if not (part == "heads" and name in _NO_HEADS)]


@pytest.mark.exec
@pytest.mark.parametrize(("name", "part"), _CASES)
def test_derived_config_counts_like_transformers(name, part):
    import torch
    import transformers

    spec = registry_spec(name)
    strategy = {
        "depth": CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.4)),
        "width": CompressionStrategy(distillation=DistillationSpec(width_ratio=0.6),
                                     quantization=QuantizationSpec(weights="nf4")),
        "heads": CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="heads")),
        "layers": CompressionStrategy(sparsity=SparsitySpec(level=0.3, pattern="layers")),
    }[part]
    derived = derive_spec(spec, strategy)
    config = transformers.AutoConfig.for_model(**{k: v for k, v in derived.config.items() if k != "auto_map"})
    auto = transformers.AutoModel if spec.model_type == "bert" else transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == derived.params.total < spec.params.total


def test_kept_by_influence_keeps_the_most_influential_ties_to_the_lower_index():
    from planner.models.derive import kept_by_influence

    assert kept_by_influence([0.1, 0.9, 0.5], 2) == [1, 2]  # returned in block order
    assert kept_by_influence([0.2, 0.5, 0.5, 0.5], 2) == [1, 2]  # a tie goes to the lower index
    assert kept_by_influence([0.5, 0.5, 0.5, 0.5], 3) == [0, 1, 2]
    assert kept_by_influence([0.3, 0.1, 0.3, 0.2], 4) == [0, 1, 2, 3]
    for bad, count in (([0.1, 0.2], 0), ([0.1, 0.2], 3), ([float("nan"), 0.2], 1)):
        with pytest.raises(InvalidRequestError):
            kept_by_influence(bad, count)


def test_layer_pruning_keeps_by_influence_when_known_else_evenly_spaced():
    from planner.models.derive import layers_kept, original_blocks

    assert layers_kept(4, 0.5) == [0, 3]  # the evenly spaced assumption
    assert layers_kept(4, 0.5, [0.2, 0.9, 0.8, 0.1]) == [1, 2]
    with pytest.raises(InvalidRequestError, match="another model"):
        layers_kept(4, 0.5, [0.2, 0.9, 0.8])
    layers = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers"))
    assert original_blocks(4, layers, [0.2, 0.9, 0.8, 0.1]) == [1, 2]
    assert original_blocks(4, layers) == [0, 3]
    assert original_blocks(4, CompressionStrategy(sparsity=SparsitySpec(level=0.5))) is None
    # a depth student first keeps original blocks 0, 2, 5, 7 of 8; the executor then measures the student's
    # influence, so the teacher's does not apply: evenly spaced among the student's blocks
    student = CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5),
                                  sparsity=SparsitySpec(level=0.5, pattern="layers"))
    assert original_blocks(8, student, [1.0] * 8) == [0, 7]


def test_the_derived_layer_types_are_those_of_the_blocks_influence_keeps():
    spec = registry_spec("google/gemma-2-2b")  # alternating sliding / full attention
    layers = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers"))
    n = spec.num_layers
    even_first = [1.0 if i % 2 == 0 else 0.0 for i in range(n)]  # the influential blocks: every even one
    types = spec.attention.layer_types
    derived = derive_spec(spec, layers, influence=even_first)
    assert list(derived.attention.layer_types) == [types[i] for i in range(0, n, 2)]
    odd_first = [1.0 - v for v in even_first]
    assert list(derive_spec(spec, layers, influence=odd_first).attention.layer_types) == [types[i]
                                                                                          for i in range(1, n, 2)]

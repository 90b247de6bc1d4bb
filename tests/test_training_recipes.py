"""Recipe-level memory savers and sharded layouts: what each keeps alive at the peak."""

from __future__ import annotations

import pytest

from planner import estimate_memory
from planner.memory.result import GIB
from planner.memory.training.logits import TORCHTUNE_CHUNKS, loss_memory
from planner.memory.training.sharding import StateInputs, shard_states

LLAMA3 = "meta-llama/Llama-3.1-8B"
VOCAB = 128_256
TORCHTUNE = dict(framework="torchtune", train_precision="bf16", lora_dropout=0.0, grad_checkpointing="full",
                 activation_offload=True, packing=True)


def test_compiled_chunked_loss_keeps_bf16_chunks_and_one_fp32_chunk():
    eager = loss_memory(vocab=VOCAB, hidden=4096, impl="chunked-8", compute_bytes=2, fp32_loss=True)
    compiled = loss_memory(vocab=VOCAB, hidden=4096, impl="chunked-8", compute_bytes=2, fp32_loss=True, compiled=True)
    assert eager.per_token == VOCAB * (2 + 4) + VOCAB * 2 * 4 / TORCHTUNE_CHUNKS
    assert compiled.per_token == VOCAB * 2 + 4 + VOCAB * (4 + 4 + 2) / TORCHTUNE_CHUNKS


def test_issue_example_logits_term_is_what_chunked_output_keeps():
    """4096 tokens of Llama-3.1-8B: 1 GiB of bf16 chunks + one eighth of the tokens in fp32 (not several GiB)."""
    estimate = estimate_memory(LLAMA3, "bf16", mode="lora", batch=2, seq_len=2048, compile=True, **TORCHTUNE)
    expected = 4096 * (VOCAB * 2 + 4 + VOCAB * 10 / 8) / GIB
    assert estimate.breakdown_gib["logits"] == pytest.approx(expected, rel=1e-6)
    assert estimate.breakdown_gib["logits"] < 1.7


def test_activation_offload_keeps_two_layers_of_checkpoints_on_the_gpu():
    kept = estimate_memory(LLAMA3, "bf16", mode="lora", batch=2, seq_len=2048, **TORCHTUNE)
    stored = estimate_memory(LLAMA3, "bf16", mode="lora", batch=2, seq_len=2048,
                             **{**TORCHTUNE, "activation_offload": False})
    checkpoint = 2 * 2048 * 4096 * 2 / GIB  # one layer input, bf16
    assert stored.phases_gib["backward"] - kept.phases_gib["backward"] == pytest.approx(
        30 * checkpoint, rel=1e-3)
    assert kept.host_ram_gib >= 32 * checkpoint


def test_optimizer_in_backward_frees_gradients_before_the_step():
    common = dict(framework="torchtune", train_precision="bf16", optimizer="paged-adamw-8bit",
                  grad_checkpointing="full", batch=2, seq_len=2048)
    separate = estimate_memory(LLAMA3, "bf16", mode="full", **common)
    fused = estimate_memory(LLAMA3, "bf16", mode="full", optimizer_in_backward=True, **common)
    gradients = 8.03e9 * 2 / GIB
    assert separate.breakdown_gib.get("gradients", 0) == pytest.approx(gradients, rel=0.01)
    step = separate.phases_gib["step"] - fused.phases_gib["step"]
    assert step == pytest.approx(gradients, rel=0.01)  # no gradient is alive when the step phase is reached
    assert fused.peak_allocated_gib < separate.peak_allocated_gib - 10


def test_torchtune_2024_loss_is_plain_cross_entropy_on_bf16_logits():
    estimate = estimate_memory("meta-llama/Llama-2-7b-hf", "bf16", mode="lora", batch=2, seq_len=512,
                               framework="torchtune-2024", train_precision="bf16")
    assert estimate.breakdown_gib["logits"] == pytest.approx(1024 * 32000 * 3 * 2 / GIB, rel=1e-6)


def hf_spec():
    from planner import get_model

    return get_model("meta-llama/Llama-2-70b-hf")


def _fsdp(frozen_bytes: float, replicated: float = 0.0, trainable: int = 0, total: int = 1000):
    inputs = StateInputs(trainable_params=trainable, frozen_weight_bytes=frozen_bytes, param_bytes=2, grad_bytes=2,
                         compute_bytes=2, states_at_param_dtype=0, states_fp32=0, largest_layer_params=100,
                         total_params=total, frozen_replicated_bytes=replicated)
    return shard_states(inputs, sharding="fsdp", gpus=4)


def test_fsdp_gathers_frozen_weights_as_stored():
    bf16, nf4 = _fsdp(2000.0), _fsdp(500.0)
    assert bf16.buffers == 2 * 100 * 2 and nf4.buffers == 2 * 100 * 0.5
    full = _fsdp(0.0, trainable=1000)
    assert full.buffers == 2 * 100 * 2 + 100 * 2


def test_bitsandbytes_quant_state_stays_whole_under_fsdp_but_torchao_nf4_shards_it():
    states = _fsdp(562.5, replicated=62.5)
    assert states.frozen_weights == pytest.approx(500 / 4 + 62.5)
    from planner.formats import get_format
    from planner.memory.training.catalog import get_framework
    from planner.memory.training.options import training_options
    from planner.memory.training.setup import frozen_weights, quant_state_bytes
    from planner.memory.training.trainable import plan_trainable

    spec, fmt = hf_spec(), get_format("nf4")
    frozen = frozen_weights(spec, fmt, plan_trainable(spec, "qlora"), get_framework("hf"),
                            training_options("qlora", 1))
    linear = sum(g.params_each * g.count for g in spec.linear_groups() if g.name.startswith("layers."))
    # one fp32 absmax per 64 weights (+ 145 bytes of per-tensor quant_state metadata)
    assert quant_state_bytes(frozen, fmt) == pytest.approx(linear / 64 * 4 + 7 * 80 * 145)
    assert not get_framework("hf").fsdp_shards_quant_state and get_framework("torchtune").fsdp_shards_quant_state

"""Logits/loss bytes per implementation and training FLOPs / time."""

from __future__ import annotations

import pytest

import planner
from planner.errors import InvalidRequestError
from planner.memory.training.logits import LOSS_IMPLS, loss_memory
from planner.memory.training.throughput import training_flops_per_token, training_time
from planner.memory.training.trainable import plan_trainable

V = 128_256


def test_hf_fp32_loss_holds_three_fp32_logits_tensors():
    # Llama-3 vocabulary, 2048 tokens: log-probs + their gradient + the logits' gradient, fp32
    assert loss_memory(vocab=V, hidden=4096, impl="full", compute_bytes=2, fp32_loss=True).at(1, 2048) \
        == 2048 * V * 4 * 3
    # without the fp32 cast (Qwen-1 remote code, no autocast) the same three tensors are bf16
    assert loss_memory(vocab=V, hidden=4096, impl="full", compute_bytes=2, fp32_loss=False).at(1, 2048) \
        == 2048 * V * 2 * 3


def test_loss_implementations_order_by_memory():
    at = {impl: loss_memory(vocab=V, hidden=4096, impl=impl, compute_bytes=2, fp32_loss=True).at(2, 4096)
          for impl in LOSS_IMPLS}
    assert at["fused"] < at["chunked-128"] < at["chunked-8"] < at["full"]
    assert at["chunked-128"] == 2 * (4096 * V * (2 + 4) + 128 * V * 2 * 4)


def test_unknown_loss_implementation():
    with pytest.raises(InvalidRequestError, match="chunked-128"):
        loss_memory(vocab=V, hidden=4096, impl="sparse", compute_bytes=2, fp32_loss=True)


@pytest.fixture(scope="module")
def llama():
    return planner.get_model("meta-llama/Llama-3.1-8B")


def test_full_finetune_flops_are_6p_plus_palm_attention(llama, seq=2048):
    matmul = llama.params.total - llama.params.embeddings - llama.params.norms  # lookups and norms are no matmuls
    flops = training_flops_per_token(llama, plan_trainable(llama, "full"), seq, "none")
    assert flops.per_token == pytest.approx(6 * matmul + 12 * 32 * seq * 4096)


def test_lora_skips_weight_gradients_and_checkpointing_adds_a_forward(llama):
    full = training_flops_per_token(llama, plan_trainable(llama, "full"), 2048, "none")
    lora = training_flops_per_token(llama, plan_trainable(llama, "lora"), 2048, "none")
    assert 0.66 < lora.per_token / full.per_token < 0.7  # ~4P of 6P
    checkpointed = training_flops_per_token(llama, plan_trainable(llama, "lora"), 2048, "full")
    assert checkpointed.per_token - lora.per_token == pytest.approx(checkpointed.recompute)
    assert checkpointed.recompute > 0


def test_training_time_and_cost():
    time = training_time(tokens=1e9, flops_per_token=6e10, gpus=8, peak_tflops=1000, mfu=0.5, usd_per_gpu_hour=2.0)
    assert time.tokens_per_second == pytest.approx(8 * 1000e12 * 0.5 / 6e10)
    assert time.gpu_hours == pytest.approx(1e9 / time.tokens_per_second * 8 / 3600)
    assert time.cost_usd == pytest.approx(time.gpu_hours * 2.0)
    with pytest.raises(InvalidRequestError, match="mfu"):
        training_time(tokens=1e9, flops_per_token=6e10, gpus=8, peak_tflops=1000, mfu=1.5)

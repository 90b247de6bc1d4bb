"""Activation model properties: Korthikanti's count, checkpointing, frozen bases, freeze mode."""

from __future__ import annotations

import pytest

import planner
from planner.memory.training.activation_memory import activation_memory
from planner.memory.training.activations import ActivationSettings, layer_saved
from planner.memory.training.trainable import plan_trainable
from planner.models.spec import ModelSpec

BF16 = ActivationSettings(residual_bytes=2, matmul_bytes=2, norm_fp32_input=True)


def gpt_layer_spec() -> ModelSpec:
    """A GPT-2 layout with erf-GELU and 4h MLP: the layer Korthikanti et al. 2022 count."""
    return ModelSpec.from_config({"model_type": "gpt2", "n_embd": 1024, "n_layer": 2, "n_head": 16,
                                  "vocab_size": 50257, "n_positions": 2048, "activation_function": "gelu",
                                  "attn_pdrop": 0.1, "resid_pdrop": 0.1, "embd_pdrop": 0.1}, name="gpt")


def test_korthikanti_34_sbh_for_a_gpt_layer_with_flash_attention():
    spec = gpt_layer_spec()
    settings = ActivationSettings(residual_bytes=2, matmul_bytes=2, norm_fp32_input=False, attention="flash",
                                  attention_dropout=0.1, hidden_dropout=0.1)
    saved = layer_saved(spec, settings, lambda g: "trainable", seq_len=2048, norms_trainable=True)
    layer_norm_stats, log_sum_exp = 2 * 8, 4 * 16
    assert sum(saved.values()) == 34 * 1024 + layer_norm_stats + log_sum_exp


def test_korthikanti_5as_over_h_term_for_eager_attention():
    spec, s, heads = gpt_layer_spec(), 2048, 16
    flash = ActivationSettings(residual_bytes=2, matmul_bytes=2, norm_fp32_input=False, attention="flash",
                               attention_dropout=0.1, hidden_dropout=0.1)
    eager = ActivationSettings(**{**flash.__dict__, "attention": "eager"})
    trainable = lambda g: "trainable"  # noqa: E731
    gap = sum(layer_saved(spec, eager, trainable, seq_len=s, norms_trainable=True).values()) \
        - sum(layer_saved(spec, flash, trainable, seq_len=s, norms_trainable=True).values())
    # Korthikanti: softmax 2as + dropout mask as + dropout output 2as; transformers keeps the softmax in fp32 (+2as).
    # Eager's q, k, v copies for the batched matmuls weigh what flash's fused qkv storage does; flash adds the lse.
    assert gap == (5 + 2) * heads * s - 4 * heads


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B", "Qwen/Qwen3-30B-A3B", "google/gemma-2-9b",
                                  "microsoft/Phi-3-mini-4k-instruct", "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct",
                                  "openai-community/gpt2", "tiiuae/falcon-7b", "facebook/opt-1.3b"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_checkpointing_never_increases_activations(name, mode):
    spec = planner.get_model(name)
    plan = plan_trainable(spec, mode, lora_targets=("all-linear",))
    for attention in ("flash", "eager"):
        settings = ActivationSettings(**{**BF16.__dict__, "attention": attention})
        none, full, selective = (activation_memory(spec, settings, plan, checkpointing=c)
                                 for c in ("none", "full", "selective"))
        for seq in (128, 4096):
            assert full.backward_peak(1, seq) <= none.backward_peak(1, seq)
            assert selective.backward_peak(1, seq) <= none.backward_peak(1, seq)
            assert full.stored(1, seq) <= selective.stored(1, seq)


def test_a_frozen_base_keeps_fewer_activations_than_full_finetuning():
    spec = planner.get_model("meta-llama/Llama-3.1-8B")
    full = activation_memory(spec, BF16, plan_trainable(spec, "full"))
    lora = activation_memory(spec, BF16, plan_trainable(spec, "lora", lora_targets=("q_proj", "v_proj")))
    assert lora.stored(1, 2048) < full.stored(1, 2048)
    # frozen Linear layers save no inputs: the MLP keeps gate, up and SiLU output but not down's input
    saved = dict(lora.largest_tensors)
    assert "mlp.product" not in saved and "mlp.act_out" in saved


def test_freeze_mode_keeps_nothing_before_the_first_trainable_layer():
    spec = planner.get_model("meta-llama/Llama-3.1-8B")
    two = activation_memory(spec, BF16, plan_trainable(spec, "freeze", trainable_layers=2))
    full = activation_memory(spec, BF16, plan_trainable(spec, "full"))
    assert two.grad_layers == 2
    assert two.stored(1, 1024) < full.stored(1, 1024) / 10


def test_activation_offloading_keeps_two_layers_on_the_gpu():
    spec = planner.get_model("meta-llama/Llama-3.1-8B")
    plan = plan_trainable(spec, "full")
    kept = activation_memory(spec, BF16, plan)
    offloaded = activation_memory(spec, BF16, plan, offload=True)
    # everything goes to host RAM; the GPU keeps two layers' worth on top of the non-layer tensors
    assert offloaded.host_per_token + offloaded.stored_per_token == pytest.approx(
        kept.stored_per_token + 2 * kept.layer_per_token)
    assert offloaded.stored_per_token < kept.stored_per_token / 10


def test_eager_backward_workspace_holds_two_fp32_score_gradients():
    from planner.memory.training.activations import backward_workspace

    spec, heads, h, s = gpt_layer_spec(), 16, 1024, 2048
    eager = ActivationSettings(residual_bytes=2, matmul_bytes=2, norm_fp32_input=False, attention="eager")
    flash = ActivationSettings(**{**eager.__dict__, "attention": "flash"})
    residual_grads, mlp = 2 * 2 * h, 2 * 2 * 4 * h  # 2-byte residual grads in and out; plain MLP: 2 x 4h grads
    # flash: dq, dk, dv, d(out) (4 x h at 2 bytes) + fp32 dq accumulator (4h) < the MLP's gradients
    assert backward_workspace(spec, flash, s) == max(mlp, 2 * 4 * h + 4 * h) + residual_grads
    # eager: dq, dk, dv, d(out) + softmax backward's fp32 output and input gradients (2 x 4 x heads x s)
    assert backward_workspace(spec, eager, s) == 2 * 4 * h + 8 * heads * s + residual_grads
    # a short sequence leaves the MLP gradients as the larger part
    assert backward_workspace(spec, eager, 1) == mlp + residual_grads

"""Encoder-decoder training (T5 / FLAN-T5 / BART): activations against autograd, and the estimate.

The autograd tests run tiny T5 models on CPU under ``saved_tensors_hooks`` (helpers from
``test_training_activations_autograd``) and compare the bytes one encoder layer plus one decoder layer
save with :func:`planner.memory.training.seq2seq.seq2seq_activation_memory`, for T5 v1.0 (ReLU, tied
head) and v1.1 (gated-GELU, untied head), with and without dropout, full fine-tuning and LoRA on q/v.
"""

from __future__ import annotations

import pytest

from planner import estimate_memory, get_model
from planner.memory.training.activations import ActivationSettings
from planner.memory.training.seq2seq import seq2seq_activation_memory
from planner.memory.training.trainable import plan_trainable
from planner.models.spec import ModelSpec

SRC, TGT, BATCH, RANK = 48, 16, 2, 4


def _t5(layers: int, *, gated: bool, dropout: float):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(d_model=64, d_ff=160, d_kv=16, num_heads=4, num_layers=layers, num_decoder_layers=layers,
                      vocab_size=300, dropout_rate=dropout, feed_forward_proj="gated-gelu" if gated else "relu",
                      tie_word_embeddings=not gated)
    config._attn_implementation = "eager"
    return T5ForConditionalGeneration(config).train()


def _run(model):
    import torch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (BATCH, SRC), generator=generator)
    decoder_ids = torch.randint(0, 300, (BATCH, TGT), generator=generator)
    if not any(p.requires_grad for p in model.parameters() if p.dim() == 2 and p.shape[0] == 300):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        model(inputs_embeds=embeds, decoder_input_ids=decoder_ids)
    else:
        model(input_ids=ids, decoder_input_ids=decoder_ids)


def _lora(model):
    import torch

    class LoraLinear(torch.nn.Module):  # peft LoraLayer.forward: base(x) + B(A(dropout(x))) * scale
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.lora_A = torch.nn.Linear(base.in_features, RANK, bias=False)
            self.lora_B = torch.nn.Linear(RANK, base.out_features, bias=False)
            self.dropout = torch.nn.Dropout(0.1)

        def forward(self, x):
            return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * 2.0

    for param in model.parameters():
        param.requires_grad_(False)
    for block in [*model.encoder.block, *model.decoder.block]:
        for layer in block.layer:
            attention = getattr(layer, "SelfAttention", None) or getattr(layer, "EncDecAttention", None)
            if attention is not None:
                attention.q = LoraLinear(attention.q)
                attention.v = LoraLinear(attention.v)
    return model


def _predicted(model, mode: str, dropout: float) -> float:
    spec = ModelSpec.from_config(model.config.to_dict(), name="tiny-t5")
    plan = plan_trainable(spec, mode, lora_rank=RANK, lora_targets=("q", "v"))
    settings = ActivationSettings(residual_bytes=4, matmul_bytes=4, norm_fp32_input=True, attention="eager",
                                  dropout_mask_bytes=4, attention_dropout=dropout, hidden_dropout=dropout,
                                  lora_dropout=0.1 if mode == "lora" else 0.0)
    acts = seq2seq_activation_memory(spec, settings, plan, checkpointing="none", offload=False, seq_len=SRC,
                                     target_len=TGT)
    return acts.stored_per_token + acts.stored_per_token_sq * SRC


@pytest.mark.exec
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_t5_layers_match_autograd(gated, dropout, mode):
    import torch

    from test_training_activations_autograd import _saved_bytes

    torch.manual_seed(0)
    build = (lambda n: _lora(_t5(n, gated=gated, dropout=dropout))) if mode == "lora" else \
        (lambda n: _t5(n, gated=gated, dropout=dropout))
    two, three = build(2), build(3)
    measured = (_saved_bytes(three, _run) - _saved_bytes(two, _run)) / (BATCH * SRC)
    predicted = _predicted(_t5(3, gated=gated, dropout=dropout), mode, dropout) - \
        _predicted(_t5(2, gated=gated, dropout=dropout), mode, dropout)
    assert predicted == pytest.approx(measured, rel=1e-9)


def test_t5_lora_estimate_replaces_unsupported_error():
    estimate = estimate_memory(get_model("t5-base"), "bf16", mode="lora", batch=8, seq_len=512)
    assert estimate.mode == "lora"
    assert estimate.training.trainable_params == 884_736  # 36 q/v modules x 8 x (768 + 768)
    labels = " ".join(t.label for t in estimate.terms)
    assert "activations" in " ".join(t.key for t in estimate.terms) and "logits" in labels


def test_shorter_targets_shrink_decoder_activations_and_logits():
    spec = get_model("t5-base")
    same = estimate_memory(spec, "bf16", mode="full", batch=8, seq_len=512)
    short = estimate_memory(spec, "bf16", mode="full", batch=8, seq_len=512, target_len=64)
    assert short.breakdown_gib["logits"] < same.breakdown_gib["logits"] / 7
    assert short.peak_allocated_gib < same.peak_allocated_gib


def test_untied_t5_v11_head_is_counted_once_per_copy():
    """FLAN-T5 (T5 v1.1) has an lm_head of its own: full fine-tuning trains and stores it."""
    tied = get_model({"model_type": "t5", "d_model": 512, "d_ff": 1024, "d_kv": 64, "num_heads": 8, "num_layers": 4,
                      "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": True})
    untied = get_model({**tied.config, "tie_word_embeddings": False})
    assert untied.params.total - tied.params.total == 32128 * 512
    a = estimate_memory(tied, "fp32", mode="full", train_precision="fp32", batch=1, seq_len=128)
    b = estimate_memory(untied, "fp32", mode="full", train_precision="fp32", batch=1, seq_len=128)
    assert b.training.trainable_params - a.training.trainable_params == 32128 * 512


def test_target_len_must_be_positive():
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="target_len"):
        estimate_memory(get_model("t5-base"), "bf16", mode="lora", seq_len=128, target_len=0)


def _bart(layers: int, *, dropout: float):
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(d_model=64, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=160, decoder_ffn_dim=160, vocab_size=300,
                        max_position_embeddings=128, dropout=dropout, attention_dropout=0.0, activation_dropout=0.0)
    config._attn_implementation = "eager"
    return BartForConditionalGeneration(config).train()


@pytest.mark.exec
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_bart_layers_match_autograd(dropout):
    """Post-norm BART: self-attention, encoder_attn cross-attention and fc1/fc2 with biases, full fine-tuning."""
    import torch

    from planner.memory.training.activations import config_dropouts
    from test_training_activations_autograd import _saved_bytes

    def run(model):
        generator = torch.Generator().manual_seed(0)
        model(input_ids=torch.randint(3, 300, (BATCH, SRC), generator=generator),
              decoder_input_ids=torch.randint(3, 300, (BATCH, TGT), generator=generator))

    def predicted(model):
        spec = ModelSpec.from_config(model.config.to_dict(), name="tiny-bart")
        attention, hidden = config_dropouts(spec)
        settings = ActivationSettings(residual_bytes=4, matmul_bytes=4, norm_fp32_input=True, attention="eager",
                                      dropout_mask_bytes=4, attention_dropout=attention, hidden_dropout=hidden)
        acts = seq2seq_activation_memory(spec, settings, plan_trainable(spec, "full"), checkpointing="none",
                                         offload=False, seq_len=SRC, target_len=TGT)
        return acts.stored_per_token + acts.stored_per_token_sq * SRC

    torch.manual_seed(0)
    two, three = _bart(2, dropout=dropout), _bart(3, dropout=dropout)
    measured = (_saved_bytes(three, run) - _saved_bytes(two, run)) / (BATCH * SRC)
    assert predicted(three) - predicted(two) == pytest.approx(measured, rel=1e-9)


def test_bart_large_parameters_and_lora_estimate():
    """facebook/bart-large: 406,291,456 parameters (transformers meta-device count); LoRA r=8 on q_proj and
    v_proj adapts all 36 attention blocks (12 encoder, 12 decoder self-, 12 cross-attention)."""
    config = {"model_type": "bart", "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
              "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
              "decoder_ffn_dim": 4096, "vocab_size": 50265, "max_position_embeddings": 1024, "dropout": 0.1,
              "activation_function": "gelu", "tie_word_embeddings": True}
    spec = get_model(config, name="facebook/bart-large")
    assert spec.params.total == 406_291_456 and spec.architecture == "encoder-decoder"
    estimate = estimate_memory(spec, "fp32", mode="lora", train_precision="fp32", batch=8, seq_len=128,
                               lora_targets="q_proj,v_proj")
    assert estimate.training.trainable_params == 36 * 8 * (1024 + 1024) * 2


def test_target_len_needs_an_encoder_decoder():
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="encoder-decoder"):
        estimate_memory(get_model("meta-llama/Llama-2-7b-hf"), "bf16", mode="lora", seq_len=128, target_len=64)

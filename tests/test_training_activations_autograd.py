"""The activation model against autograd: bytes saved for backward by real transformers layers.

Runs tiny transformers models on CPU under ``torch.autograd.graph.saved_tensors_hooks`` and compares
the bytes of every saved (non-parameter) storage per token and layer with
:func:`planner.memory.training.activations.layer_saved`. CPU dropout keeps its mask in the input
dtype (CUDA keeps a 1-byte bool), so the settings use ``dropout_mask_bytes=4`` here.
"""

from __future__ import annotations

import pytest

from planner.memory.training.activations import ActivationSettings, config_dropouts, layer_saved
from planner.models.spec import ModelSpec

pytestmark = pytest.mark.exec

BATCH, SEQ = 2, 64


def _saved_bytes(model, run) -> int:
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(model)
    return sum(seen.values())


def _measured_per_layer(build, run) -> float:
    """Saved bytes per token of one layer: the difference between a 3-layer and a 2-layer model."""
    import torch

    torch.manual_seed(0)
    two, three = _saved_bytes(m2 := build(2), run), _saved_bytes(build(3), run)
    del m2
    return (three - two) / (BATCH * SEQ)


def _ids():
    import torch

    return torch.randint(0, 500, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def _llama(layers, *, dtype="bfloat16", attention="sdpa", trainable=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500, max_position_embeddings=256)
    config._attn_implementation = attention
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).train()
    if trainable is not None:
        for name, param in model.named_parameters():
            param.requires_grad_(any(t in name for t in trainable))
    return model


def _spec(model) -> ModelSpec:
    return ModelSpec.from_config(model.config.to_dict(), name="tiny")


def _run_embeds(model):
    """Forward from embeddings that require grad (what a frozen base sees when input grads flow)."""
    embeds = model.get_input_embeddings()(_ids()).detach().requires_grad_(True)
    model(inputs_embeds=embeds)


def _modes(mode):
    return lambda group: mode


@pytest.mark.parametrize("dtype,attention,bytes_", [("bfloat16", "sdpa", 2), ("bfloat16", "eager", 2),
                                                    ("float32", "sdpa", 4), ("float32", "eager", 4)])
def test_llama_full_finetune_matches_autograd(dtype, attention, bytes_):
    build = lambda n: _llama(n, dtype=dtype, attention=attention)  # noqa: E731
    settings = ActivationSettings(residual_bytes=bytes_, matmul_bytes=bytes_, norm_fp32_input=True,
                                  attention="flash" if attention == "sdpa" else "eager")
    predicted = layer_saved(_spec(build(1)), settings, _modes("trainable"), seq_len=SEQ, norms_trainable=True)
    assert sum(predicted.values()) == _measured_per_layer(build, lambda m: m(input_ids=_ids()))


def test_llama_frozen_base_keeps_no_linear_inputs():
    build = lambda n: _llama(n, trainable=["nothing"])  # noqa: E731
    settings = ActivationSettings(residual_bytes=2, matmul_bytes=2, norm_fp32_input=True)
    predicted = layer_saved(_spec(build(1)), settings, _modes("frozen"), seq_len=SEQ, norms_trainable=False)
    assert sum(predicted.values()) == _measured_per_layer(build, _run_embeds)


def test_llama_lora_with_dropout_matches_autograd():
    """peft-style adapters on q_proj and v_proj (one dropout per adapted module)."""
    import torch

    rank = 8

    class LoraLinear(torch.nn.Module):  # peft LoraLayer.forward: base(x) + B(A(dropout(x))) * scale
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False, dtype=base.weight.dtype)
            self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False, dtype=base.weight.dtype)
            self.dropout = torch.nn.Dropout(0.05)

        def forward(self, x):
            return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * 2.0

    def build(layers):
        model = _llama(layers, trainable=["nothing"])
        for layer in model.model.layers:
            layer.self_attn.q_proj = LoraLinear(layer.self_attn.q_proj)
            layer.self_attn.v_proj = LoraLinear(layer.self_attn.v_proj)
        return model.train()

    spec = _spec(_llama(1))
    modes = lambda g: "lora" if g.role in ("q", "v") else "frozen"  # noqa: E731
    settings = ActivationSettings(residual_bytes=2, matmul_bytes=2, norm_fp32_input=True, lora_dropout=0.05,
                                  lora_dropout_per_module=True, dropout_mask_bytes=2)
    ranks = {g.name: rank for g in spec.linear_groups() if g.role in ("q", "v")}
    predicted = layer_saved(spec, settings, modes, seq_len=SEQ, norms_trainable=False, lora_ranks=ranks)
    assert sum(predicted.values()) == _measured_per_layer(build, _run_embeds)


def test_llama_autocast_activations_match_autograd():
    """fp32 weights under bf16 autocast: residual stream fp32, one bf16 input cast per Linear.

    autocast's bf16 weight copies are saved too but are not activations: differencing two sequence
    lengths (and two depths) cancels them.
    """
    import torch

    def saved(layers, seq):
        ids = torch.randint(0, 500, (BATCH, seq), generator=torch.Generator().manual_seed(0))

        def run(m):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                m(input_ids=ids)
        return _saved_bytes(_llama(layers, dtype="float32"), run)

    measured = (saved(3, 2 * SEQ) - saved(3, SEQ) - saved(2, 2 * SEQ) + saved(2, SEQ)) / (BATCH * SEQ)
    settings = ActivationSettings(residual_bytes=4, matmul_bytes=2, norm_fp32_input=True)
    predicted = layer_saved(_spec(_llama(1)), settings, _modes("trainable"), seq_len=SEQ, norms_trainable=True)
    assert sum(predicted.values()) == measured


def _assert_eager_fp32_with_config_dropout(build):
    spec = _spec(build(1))
    attention_dropout, hidden_dropout = config_dropouts(spec)
    settings = ActivationSettings(residual_bytes=4, matmul_bytes=4, norm_fp32_input=False, attention="eager",
                                  dropout_mask_bytes=4, attention_dropout=attention_dropout,
                                  hidden_dropout=hidden_dropout)
    predicted = layer_saved(spec, settings, _modes("trainable"), seq_len=SEQ, norms_trainable=True)
    assert sum(predicted.values()) == _measured_per_layer(build, lambda m: m(input_ids=_ids()))


def test_gpt2_eager_with_dropout_matches_autograd():
    from transformers import GPT2Config, GPT2LMHeadModel

    def build(layers):
        config = GPT2Config(n_embd=128, n_layer=layers, n_head=4, vocab_size=500, n_positions=128,
                            bos_token_id=0, eos_token_id=0)
        config._attn_implementation = "eager"
        return GPT2LMHeadModel(config).train()

    _assert_eager_fp32_with_config_dropout(build)


def test_bert_eager_with_dropout_matches_autograd():
    from transformers import BertConfig, BertForSequenceClassification

    def build(layers):
        config = BertConfig(hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=512, vocab_size=500)
        config._attn_implementation = "eager"
        return BertForSequenceClassification(config).train()

    _assert_eager_fp32_with_config_dropout(build)


def test_dropout_defaults_match_transformers_config_classes():
    from transformers import CONFIG_MAPPING

    from planner.memory.training.activations import config_dropouts
    from planner.models.hf_config import SUPPORTED_MODEL_TYPES

    for model_type in SUPPORTED_MODEL_TYPES:
        if model_type not in CONFIG_MAPPING:
            continue  # remote-code families (Qwen-1) state their dropouts in config.json
        config = CONFIG_MAPPING[model_type]().to_dict()
        spec = type("Spec", (), {"config": {}, "model_type": model_type})()
        expected = type("Spec", (), {"config": config, "model_type": "none"})()
        assert config_dropouts(spec) == config_dropouts(expected), model_type

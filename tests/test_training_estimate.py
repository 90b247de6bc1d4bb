"""End-to-end fine-tuning estimates through planner.estimate_memory."""

from __future__ import annotations

import pytest

from planner.errors import InvalidRequestError, UnsupportedError
from planner.memory import estimate_memory
from planner.memory.result import BREAKDOWN_KEYS

LLAMA = "meta-llama/Llama-3.1-8B"


def total(estimate, key):
    return estimate.breakdown_gib.get(key, 0.0)


def test_qlora_llama_has_a_full_breakdown():
    e = estimate_memory(LLAMA, "nf4", mode="qlora", batch=1, seq_len=2048)
    assert e.mode == "qlora" and e.precision == "nf4" and e.seq_len == 2048
    for key in ("weights_quantized", "weights_unquantized", "adapters", "optimizer_states", "activations", "logits",
                "runtime_overhead", "allocator_reserve"):
        assert total(e, key) > 0, key
    assert set(e.breakdown_gib) <= set(BREAKDOWN_KEYS)
    assert e.peak_allocated_gib < e.device_total_gib < e.safe_gib
    assert e.training.trainable_params == 3_407_872
    assert e.assumptions["grad_checkpointing"] == "full"  # peft.prepare_model_for_kbit_training default
    # fp32 logits of a 128k vocabulary: 3 copies x 2048 x 128256 x 4 bytes
    assert total(e, "logits") == pytest.approx(3 * 2048 * 128_256 * 4 / 2**30)


def test_full_amp_adamw_model_states_are_16_bytes_per_parameter():
    e = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=512, train_precision="mixed")
    p = e.params_total
    assert e.peak_phase in ("loss", "backward", "step")
    step = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=512, train_precision="mixed",
                           optimizer="adamw-fused")
    # in the step phase: fp32 weights 4 + fp32 grads 4 + AdamW 8 bytes per parameter
    assert step.phases_gib["step"] * 2**30 == pytest.approx(16 * p + 0.5e9, rel=0.05)


def test_gradient_checkpointing_never_raises_the_peak():
    kwargs = dict(mode="lora", batch=4, seq_len=4096)
    none = estimate_memory(LLAMA, "bf16", grad_checkpointing="none", **kwargs)
    full = estimate_memory(LLAMA, "bf16", grad_checkpointing="full", **kwargs)
    assert full.peak_allocated_gib < none.peak_allocated_gib


def test_more_gpus_under_zero3_never_raise_per_gpu_memory():
    peaks = [estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=2048, gpus=n, sharding="zero3",
                             grad_checkpointing="full").peak_allocated_gib for n in (1, 2, 4, 8, 16)]
    assert all(b <= a for a, b in zip(peaks, peaks[1:]))
    assert peaks[-1] < peaks[0] / 4


def test_eight_bit_and_paged_optimizers():
    adamw = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=512, train_precision="bf16")
    eight = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=512, train_precision="bf16",
                            optimizer="adamw_bnb_8bit")
    assert total(eight, "optimizer_states") < total(adamw, "optimizer_states") / 1.9
    paged = estimate_memory(LLAMA, "nf4", mode="qlora", batch=1, seq_len=512, optimizer="paged_adamw_8bit")
    states = [t for t in paged.terms if t.key == "optimizer_states"]
    assert states and all(t.counted_in == "device" for t in states)
    assert any("unified memory" in w for w in paged.warnings)


def test_offload_reports_host_ram():
    e = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=1024, gpus=4, sharding="zero3",
                        offload="optimizer")
    assert e.host_ram_gib > 8e9 * 16 * 1.5 / 2**30 * 0.9
    assert total(e, "optimizer_states") == 0


def test_freeze_trains_the_last_layers_only():
    e = estimate_memory(LLAMA, "bf16", mode="freeze", batch=1, seq_len=1024, trainable_layers=2)
    assert e.training.trainable_params == 2 * 218_112_000
    full = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=1024)
    assert e.peak_allocated_gib < full.peak_allocated_gib / 3


def test_encoder_classification_has_no_vocabulary_logits():
    e = estimate_memory("google-bert/bert-large-uncased", "fp32", mode="full", batch=4, seq_len=512,
                        train_precision="fp32", attention="eager")
    assert "logits" not in e.breakdown_gib and total(e, "activations") > 5


def test_throughput_and_cost_with_a_gpu():
    e = estimate_memory(LLAMA, "nf4", mode="qlora", batch=1, seq_len=2048, gpu="H100 SXM", training_tokens=1e8)
    assert e.training.tokens_per_second > 0 and e.training.gpu_hours > 0
    assert e.fit.fits is True


@pytest.mark.parametrize("precision,mode,options,error,message", [
    ("bf16", "qlora", {}, InvalidRequestError, "not 4-bit"),
    ("int8", "qlora", {}, InvalidRequestError, "not 4-bit"),
    ("nf4", "lora", {}, InvalidRequestError, "mode='qlora'"),
    ("nf4", "full", {}, InvalidRequestError, "float format"),
    ("bf16", "lora", {"optimizer": "adamm"}, InvalidRequestError, "Did you mean"),
    ("bf16", "lora", {"lora_rank": 0}, InvalidRequestError, "rank"),
    ("bf16", "lora", {"lora_targets": "query,value"}, InvalidRequestError, "q_proj, k_proj"),
    ("bf16", "lora", {"gpus": 4}, InvalidRequestError, "data-parallel"),
    ("bf16", "lora", {"grad_checkpointing": "partial"}, InvalidRequestError, "selective"),
    ("bf16", "lora", {"lora_rnak": 8}, InvalidRequestError, "lora_rank"),
    ("bf16", "tune", {}, InvalidRequestError, "fine-tuning mode"),
    ("bf16", "lora", {"grad_accum": 4, "optimizer_in_backward": True}, InvalidRequestError, "accumulate"),
    ("bf16", "lora", {"gpu": "NVIDIA V100 SXM2 32GB"}, UnsupportedError, "fp16-mixed"),
])
def test_bad_requests_are_explained(precision, mode, options, error, message):
    options = dict(options)
    gpus = options.pop("gpus", 1)
    gpu = options.pop("gpu", None)
    with pytest.raises(error, match=message):
        estimate_memory(LLAMA, precision, mode=mode, batch=1, seq_len=512, gpus=gpus, gpu=gpu, **options)


def test_zero3_on_one_gpu_is_allowed_with_a_warning():
    e = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=512, sharding="zero3")
    assert any("divides nothing" in w for w in e.warnings)
    single = estimate_memory(LLAMA, "bf16", mode="full", batch=1, seq_len=512, sharding="ddp")
    assert single.breakdown_gib.get("communication_buffers", 0) == 0  # DDP on one GPU is plain training


def test_lora_on_a_bitsandbytes_int8_base_upcasts_the_float_parameters():
    # peft prepare_model_for_kbit_training casts every fp16/bf16 parameter of a bitsandbytes model to fp32,
    # 8-bit bases included: embeddings, norms and lm_head double against the bf16 LoRA base.
    from planner import get_model
    from planner.memory import weight_bytes
    int8 = estimate_memory(LLAMA, "int8", mode="lora", batch=1, seq_len=512, train_precision="mixed")
    stored = weight_bytes(get_model(LLAMA), "int8").unquantized
    frozen_float = [t for t in int8.terms if t.key == "weights_unquantized" and "upcast" in t.label]
    assert frozen_float and frozen_float[0].gib == pytest.approx(2 * stored / 2**30, rel=1e-6)
    assert int8.assumptions["residual_stream_bytes"] == 4  # fp32 embeddings and norms keep the stream fp32


def test_peft_0_4_stack_keeps_lora_adapters_in_fp32():
    # peft 0.4.0 LoraLayer.update_layer builds lora_A/lora_B as nn.Linear (fp32) and moves them by device only
    e = estimate_memory(LLAMA, "nf4", mode="qlora", batch=1, seq_len=256, framework="hf-2023",
                        train_precision="fp16-mixed")
    adapters = [t for t in e.terms if t.key == "adapters"][0]
    assert adapters.gib * 2**30 == pytest.approx(4 * e.training.trainable_params)


def test_pytorch_1x_trainer_keeps_zeroed_gradients_through_the_next_step():
    # zero_grad(set_to_none=False) (the default before PyTorch 2.0) zeroes .grad in place, so with one
    # micro-batch per step the gradients are alive in forward and backward too, not only in the step
    kwargs = dict(mode="full", batch=1, seq_len=256, train_precision="fp32", attention="flash", optimizer="sgd")
    old = estimate_memory(LLAMA, "fp32", framework="hf-2021", **kwargs)
    new = estimate_memory(LLAMA, "fp32", framework="hf", **kwargs)
    grads = 4 * old.params_total / 2**30
    assert old.phases_gib["loss"] - new.phases_gib["loss"] == pytest.approx(grads, abs=2e-3)
    assert old.phases_gib["step"] == pytest.approx(new.phases_gib["step"], abs=2e-3)
    # with gradient accumulation both keep them anyway
    acc = {**kwargs, "grad_accum": 2}
    assert estimate_memory(LLAMA, "fp32", framework="hf-2021", **acc).phases_gib["loss"] == pytest.approx(
        estimate_memory(LLAMA, "fp32", framework="hf", **acc).phases_gib["loss"], abs=2e-3)


def test_torchtune_0_1_qlora_keeps_the_to_nf4_workspace_reserved():
    # torchao 0.1 to_nf4: (value.unsqueeze(-1) - nf4).abs() -> two numel x 16 bf16 tensors + the bf16 scaled
    # blocks = 66 bytes per element of the largest quantized weight (Llama-3.1-8B MLP: 14336 x 4096)
    old = estimate_memory(LLAMA, "nf4", mode="qlora", batch=1, seq_len=256, framework="torchtune-2024",
                          train_precision="bf16")
    cached = [t for t in old.terms if "load-time 4-bit quantization" in t.label]
    assert len(cached) == 1 and cached[0].counted_in == "reserved"
    assert cached[0].gib * 2**30 == pytest.approx(66 * 14336 * 4096)
    new = estimate_memory(LLAMA, "nf4", mode="qlora", batch=1, seq_len=256, framework="torchtune",
                          train_precision="bf16")
    assert not [t for t in new.terms if "load-time 4-bit quantization" in t.label]


def test_deepspeed_keeps_fp32_frozen_weights_in_an_fp32_run():
    # engine.py _configure_distributed_model: module.half()/bfloat16() only with fp16/bf16 enabled
    kwargs = dict(mode="lora", batch=1, seq_len=128, sharding="zero2", gpus=2)
    fp32 = estimate_memory(LLAMA, "fp32", train_precision="fp32", **kwargs)
    mixed = estimate_memory(LLAMA, "fp32", train_precision="bf16-mixed", **kwargs)
    frozen = lambda e: sum(t.gib for t in e.terms if t.key == "weights_unquantized" and "frozen" in t.label)  # noqa: E731
    assert frozen(fp32) == pytest.approx(2 * frozen(mixed), rel=1e-6)

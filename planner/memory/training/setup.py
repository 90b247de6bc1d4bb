"""Resolve a fine-tuning request into the memory terms of one step (used by the estimate and sizing).

``precision`` is the format the model is loaded in (the frozen base of LoRA/QLoRA/freeze; for full
fine-tuning the recipe decides how trainable weights are stored); ``train_precision`` is the recipe
of trainable weights, gradients, optimizer states and activations; ``framework`` the stack whose
implementation facts decide what is saved for backward.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hardware_db import Accelerator
from planner.errors import InvalidRequestError, UnsupportedError
from planner.formats import WeightFormat
from planner.memory.devices import format_support
from planner.memory.phases import RawTerm
from planner.memory.training import optimizers as opt
from planner.memory.training.activation_memory import ActivationMemory, activation_memory
from planner.memory.training.activations import ActivationSettings, config_dropouts
from planner.memory.training.catalog import (
    Framework,
    Optimizer,
    Recipe,
    get_framework,
    get_optimizer,
    get_recipe,
    load_catalog,
)
from planner.memory.training.logits import LITGPT_CHUNK_TOKENS, loss_memory
from planner.memory.training.options import TrainingOptions, training_options
from planner.memory.training.seq2seq import seq2seq_activation_memory
from planner.memory.training.sharding import ShardedStates, StateInputs, shard_states, validate
from planner.memory.training.terms import StepInputs, step_terms
from planner.memory.training.trainable import TrainablePlan, plan_trainable
from planner.memory.weights import WeightBytes, allocator_waste, weight_bytes
from planner.models.spec import ModelSpec

DEFAULT_TRAIN_SEQ_LEN = 2048
MAX_TOKENS = 10_000_000
FOUR_BIT_FAMILIES = ("bnb", "gptq", "awq")


def check_base_format(fmt: WeightFormat, mode: str) -> None:
    """QLoRA needs a 4-bit base; the other modes a float base (LoRA also accepts bitsandbytes int8)."""
    four_bit = fmt.family in FOUR_BIT_FAMILIES and fmt.bits == 4
    if mode == "qlora" and not four_bit:
        raise InvalidRequestError(
            f"QLoRA trains adapters on a 4-bit base, but precision {fmt.name!r} is not 4-bit; use nf4, nf4-dq, fp4, "
            "fp4-dq, gptq-int4 or awq-int4 (or mode='lora' for a 16-bit base).")
    if mode == "lora" and fmt.family != "float" and fmt.name != "int8":
        hint = " (a 4-bit base is QLoRA: mode='qlora')" if four_bit else ""
        raise InvalidRequestError(f"LoRA needs a float or bitsandbytes int8 base, not {fmt.name!r}{hint}.")
    if mode in ("full", "freeze") and fmt.family != "float":
        raise InvalidRequestError(f"mode {mode!r} updates the weights themselves, so they must be a float format "
                                  f"(fp32, bf16, fp16), not {fmt.name!r}; quantized bases train adapters: mode='qlora'.")


def check_gpu(recipe: Recipe, fmt: WeightFormat, acc: Accelerator | None) -> None:
    if acc is None or acc.is_generic:
        return
    if recipe.compute_dtype == "bf16" and not acc.supports_bf16:
        raise UnsupportedError(f"training precision {recipe.name} computes in bf16, which {acc.name} does not support; "
                               "use train_precision='fp16-mixed' (or fp32).")
    support = format_support(fmt, acc)
    if support.supported is False:
        raise UnsupportedError(f"{support.reason}.")


@dataclass(frozen=True)
class _Frozen:
    quantized: float
    unquantized: float
    weights: WeightBytes


def frozen_weights(spec: ModelSpec, fmt: WeightFormat, plan: TrainablePlan, framework: Framework,
                   options: TrainingOptions) -> _Frozen:
    """Bytes of the weights that are not trained, in the load format (split quantized / float)."""
    engine = "litgpt" if framework.quantizes_lm_head else "hf"
    w = weight_bytes(spec, fmt, engine=engine)
    if plan.mode == "full":
        return _Frozen(0.0, 0.0, w)
    quantized, unquantized = w.quantized, w.unquantized
    if plan.mode == "freeze":
        trained = [g for g in w.groups if g.group.layers and any(i in plan.trainable_layers for i in g.group.layers)]
        for item in trained:
            share = sum(1 for i in item.group.layers if i in plan.trainable_layers) / len(item.group.layers)
            unquantized -= item.bytes * share
    if upcasts_unquantized(plan.mode, fmt, framework):
        unquantized *= 4 / 2  # peft.prepare_model_for_kbit_training: 16-bit non-quantized parameters -> fp32
    if options.sharding in ("zero1", "zero2", "zero3") and fmt.family == "float" and fmt.bits == 32 \
            and get_recipe(options.train_precision).compute_bytes < 4:
        # deepspeed/runtime/engine.py _configure_distributed_model: module.half() / module.bfloat16() only when
        # the config enables fp16 / bf16; an fp32 run keeps fp32 weights
        unquantized /= 2
    return _Frozen(quantized, unquantized, w)


def quant_state_bytes(frozen: _Frozen, fmt: WeightFormat) -> float:
    """Bytes of a bitsandbytes base beyond its packed data (absmax and nested quantization state)."""
    if fmt.family != "bnb" or not fmt.bits:
        return 0.0
    return sum(max(0.0, g.bytes - g.group.params * fmt.bits / 8) for g in frozen.weights.groups if g.quantized)


def upcasts_unquantized(mode: str, fmt: WeightFormat, framework: Framework) -> bool:
    """peft.prepare_model_for_kbit_training casts a bitsandbytes model's float parameters to fp32, for an
    8-bit base as for a 4-bit one (peft 0.4.0 utils/other.py: every fp16/bf16 parameter; later releases
    skip only Params4bit data and GPTQ/AQLM/EETQ/HQQ models), so LoRA on bitsandbytes int8 is upcast too."""
    return mode in ("lora", "qlora") and fmt.family == "bnb" and framework.kbit_upcasts_unquantized


def autocast_copy_bytes(plan: TrainablePlan, recipe: Recipe, frozen: _Frozen, upcast: bool, sharding: str,
                        adapter_bytes: int, lm_head_calls: int) -> float:
    """16-bit copies autocast makes of wider Linear weights in layers gradients flow through.

    Each matmul casts its fp32 weight and the copy is saved for backward (to compute the input
    gradient), trained or frozen, so all copies are alive when backward starts. autocast caches the
    cast only for leaf tensors that require grad; a frozen weight called several times (LitGPT's
    chunked lm_head: one call per 128-token chunk) leaves one saved copy per call.
    """
    if not recipe.autocast or sharding not in ("none", "ddp"):
        return 0.0
    total = 0.0
    for item in frozen.weights.groups:
        group = item.group
        if group.kind != "linear" or item.quantized or (group.layers and max(group.layers) < plan.first_grad_layer):
            continue
        trained = plan.mode == "full" or (plan.mode == "freeze" and set(group.layers) & plan.trainable_layers)
        stored = recipe.trainable_weight_bytes if trained else item.bytes / group.params * (2 if upcast else 1)
        if stored > recipe.compute_bytes:
            calls = lm_head_calls if group.role == "lm_head" and not trained else 1
            total += group.params * recipe.compute_bytes * calls
    if plan.mode in ("lora", "qlora") and adapter_bytes > recipe.compute_bytes:
        total += (plan.trainable_params - plan.trainable_copy_params) * recipe.compute_bytes
    return total


def saved_dequantized_bytes(spec: ModelSpec, frozen: _Frozen, plan: TrainablePlan, recipe: Recipe,
                            checkpointing: str) -> float:
    """Dequantized weights autograd keeps when the 4-bit matmul is plain PyTorch: one layer's worth under
    full checkpointing (the recomputed layer), every layer's otherwise."""
    per_layer = [0.0] * spec.num_layers
    for item in frozen.weights.groups:
        group = item.group
        if item.quantized and group.layers:
            for index in group.layers:
                per_layer[index] += group.params / len(group.layers) * recipe.compute_bytes
    grad_layers = per_layer[plan.first_grad_layer:]
    return max(grad_layers, default=0.0) if checkpointing == "full" else sum(grad_layers)


def lm_head_calls(loss_impl: str, batch: int, seq_len: int) -> int:
    """How many times the output layer runs per micro-batch (LitGPT splits the sequence into 128-token chunks)."""
    return -(-seq_len // LITGPT_CHUNK_TOKENS) if loss_impl == "chunked-128" else 1


def trainable_param_bytes(plan: TrainablePlan, recipe: Recipe, framework: Framework, fmt: WeightFormat,
                          upcast: bool) -> tuple[int, int]:
    """(adapter or trainable-weight bytes, bytes of trainable embedding copies).

    Full/freeze: the recipe's storage. LoRA adapters: fp32 or the base's float dtype per the framework.
    peft ``modules_to_save`` deep-copies the module, so copies keep the dtype of the original."""
    if plan.mode in ("full", "freeze"):
        return recipe.trainable_weight_bytes, recipe.trainable_weight_bytes
    base = int(fmt.bits // 8) if fmt.family == "float" else (4 if upcast else recipe.compute_bytes)
    return (4 if framework.adapter_dtype == "fp32" else base), base


def residual_bytes(plan: TrainablePlan, recipe: Recipe, fmt: WeightFormat, upcast: bool) -> int:
    """Bytes of the residual stream: under autocast the dtype of the stored embeddings and norms
    (fp32 weights keep it fp32), otherwise the compute dtype."""
    if not recipe.autocast:
        return recipe.compute_bytes
    if plan.mode == "full":
        return recipe.trainable_weight_bytes
    if fmt.family == "float":
        return int(fmt.bits // 8)
    return 4 if upcast else recipe.compute_bytes


def activation_settings(spec: ModelSpec, recipe: Recipe, framework: Framework, fmt: WeightFormat,
                        options: TrainingOptions, plan: TrainablePlan, upcast: bool,
                        any_quantized_base: bool = False) -> ActivationSettings:
    """The saved-tensor facts of this run; ``any_quantized_base`` applies the framework's 4-bit-input
    rule to every quantized base, not only bitsandbytes (used for the upper bound)."""
    attention_dropout, hidden_dropout = config_dropouts(spec)
    lora = plan.mode in ("lora", "qlora")
    quantized_family = fmt.family != "float" if any_quantized_base else fmt.family == "bnb"
    return ActivationSettings(
        residual_bytes=residual_bytes(plan, recipe, fmt, upcast), matmul_bytes=recipe.compute_bytes,
        norm_fp32_input=framework.norm_fp32_input, attention=options.attention, dropout_mask_bytes=1,
        lora_dropout=options.lora_dropout if lora else 0.0, lora_dropout_per_module=framework.lora_dropout_per_module,
        quantized_base_saves_input=plan.mode == "qlora" and quantized_family and framework.quantized_base_saves_input,
        attention_dropout=attention_dropout, hidden_dropout=hidden_dropout, fused_qkv=framework.fused_qkv,
        fused_gelu=framework.fused_gelu, softmax_saves_input=framework.softmax_saves_input)


def activation_bounds(spec: ModelSpec, recipe: Recipe, framework: Framework, fmt: WeightFormat,
                      options: TrainingOptions, plan: TrainablePlan, upcast: bool, seq_len: int):
    """(point, upper): the activations of this framework, and the largest over every framework profile
    of the catalog (the implementations differ in fp32 norm copies, 4-bit layers keeping their input,
    fused-qkv storage, Python GELU, softmax inputs): the safe bound covers whichever stack runs it."""
    def run(profile: Framework, any_quantized: bool):
        settings = activation_settings(spec, recipe, profile, fmt, options, plan, upcast, any_quantized)
        if spec.architecture == "encoder-decoder":
            return seq2seq_activation_memory(spec, settings, plan, checkpointing=options.grad_checkpointing,
                                             offload=options.activation_offload, seq_len=seq_len,
                                             target_len=options.target_len), settings
        return activation_memory(spec, settings, plan, checkpointing=options.grad_checkpointing,
                                 offload=options.activation_offload, seq_len=seq_len), settings
    point, settings = run(framework, False)
    upper = point
    for profile in load_catalog().frameworks.values():
        upper = upper.upper(run(profile, True)[0])
    return point, upper, settings


def _seq_len(spec: ModelSpec, seq_len: int | None, warnings: list[str]) -> tuple[int, str]:
    if seq_len is None:
        return DEFAULT_TRAIN_SEQ_LEN, f"seq_len not given: {DEFAULT_TRAIN_SEQ_LEN} tokens per sequence"
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= MAX_TOKENS:
        raise InvalidRequestError(f"seq_len must be a whole number between 1 and {MAX_TOKENS:,}, got {seq_len!r}.")
    limit = spec.max_position_embeddings
    if limit is not None and seq_len > limit:
        warnings.append(f"seq_len {seq_len:,} exceeds {spec.name}'s max_position_embeddings ({limit:,})")
    return seq_len, "seq_len as given"


def _resident_tensors(spec: ModelSpec, plan: TrainablePlan, states_per_tensor: int, grad_layers: int) -> int:
    weights = sum(g.count for g in spec.param_groups)
    trainable = sum(t.count for t in plan.tensors) * (1 + states_per_tensor)
    return weights + trainable + 12 * grad_layers


def forward_module_params(spec: ModelSpec) -> tuple[int, ...]:
    """Parameters of the modules in the order a forward pass uses them: embeddings, the encoder's layers
    (encoder-decoder models), the decoder's layers, then the output layer (the tied embedding again
    when the head shares its weight)."""
    def per_layer(prefix: str, count: int) -> list[int]:
        sizes = [0] * count
        for group in spec.param_groups:
            if group.layers and group.name.startswith(prefix):
                for index in group.layers:
                    if index < count:
                        sizes[index] += group.params // len(group.layers)
        return sizes
    outside = [g for g in spec.param_groups if not g.layers]
    heads = [g.params for g in outside if g.role == "lm_head"]
    embeddings = [g.params for g in outside if g.kind == "embedding"]
    encoder_layers = max((max(g.layers) + 1 for g in spec.param_groups
                          if g.layers and g.name.startswith("encoder.layers.")), default=0)
    tail = heads or (embeddings[:1] if spec.tie_word_embeddings else [])
    return tuple([sum(embeddings)] + per_layer("encoder.layers.", encoder_layers)
                 + per_layer("layers.", spec.num_layers) + tail)


def largest_module_params(spec: ModelSpec) -> int:
    """DeepSpeed's largest_layer_params: the largest module ZeRO-3 gathers at once (a decoder layer, or the
    embedding / output layer when it is bigger)."""
    outside = [g.params_each for g in spec.param_groups if not g.layers]
    return max([*spec.layer_params(), *outside])


def _state_tensor_sizes(plan: TrainablePlan, grad_bytes: int, param_bytes: int, optimizer, states,
                        inputs: StateInputs) -> dict[float, float]:
    """``{bytes: count}`` of per-tensor gradients and optimizer states (unsharded layouts only: ZeRO and
    FSDP keep them in flat buffers)."""
    sizes: dict[float, float] = {}
    if states.gradients != inputs.trainable_params * grad_bytes:
        return sizes
    for tensor in plan.tensors:
        per_state = opt.tensor_state_bytes(optimizer, tensor.shape, param_bytes) / max(1, optimizer.state_tensors)
        for size, count in ((tensor.numel * grad_bytes, tensor.count),
                            (per_state, tensor.count * optimizer.state_tensors)):
            if size:
                sizes[size] = sizes.get(size, 0) + count
    return sizes


@dataclass(frozen=True)
class PreparedTraining:
    """A validated fine-tuning request and the terms of its step."""

    spec: ModelSpec
    fmt: WeightFormat
    mode: str
    batch: int
    seq_len: int
    seq_note: str
    gpus: int
    gpu: Accelerator | None
    options: TrainingOptions
    recipe: Recipe
    optimizer: Optimizer
    framework: Framework
    plan: TrainablePlan
    states: ShardedStates
    activations: ActivationMemory
    settings: ActivationSettings
    param_bytes: float
    raw: list[RawTerm]
    warnings: list[str]


def prepare_training(spec: ModelSpec, fmt: WeightFormat, mode: str = "lora", *, batch: int = 1,
                     seq_len: int | None = None, gpus: int = 1, gpu: Accelerator | None = None,
                     **training: Any) -> PreparedTraining:
    """Validate a fine-tuning request and build its terms (raises FitplanError subclasses)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidRequestError(f"batch (the micro-batch per GPU) must be a positive integer, got {batch!r}.")
    options = training_options(mode, gpus, **training)
    if options.target_len is not None and spec.architecture != "encoder-decoder":
        raise InvalidRequestError(f"target_len is the decoder length of an encoder-decoder model; {spec.name} is "
                                  f"{spec.architecture}-only: give its length as seq_len.")
    warnings: list[str] = list(validate(options.sharding, gpus, options.offload))
    check_base_format(fmt, mode)
    recipe, optimizer = get_recipe(options.train_precision), get_optimizer(options.optimizer)
    framework = get_framework(options.framework)
    check_gpu(recipe, fmt, gpu)
    seq, seq_note = _seq_len(spec, seq_len, warnings)
    plan = plan_trainable(spec, mode, lora_rank=options.lora_rank, lora_targets=options.lora_targets or None,
                          train_embeddings=options.train_embeddings, trainable_layers=options.trainable_layers)
    frozen = frozen_weights(spec, fmt, plan, framework, options)
    catalog = load_catalog()
    deepspeed = options.sharding in ("zero1", "zero2", "zero3")
    upcast = upcasts_unquantized(mode, fmt, framework)
    adapter_bytes, copy_bytes = trainable_param_bytes(plan, recipe, framework, fmt, upcast)
    adapters, copies = plan.adapter_tensors, plan.copy_tensors
    copy_params = plan.trainable_copy_params
    trainable = max(1, plan.trainable_params)
    param_bytes = (adapter_bytes * (plan.trainable_params - copy_params) + copy_bytes * copy_params) / trainable
    grad_bytes = recipe.gradient_bytes if mode in ("full", "freeze") else param_bytes
    inputs = StateInputs(
        trainable_params=plan.trainable_params, frozen_weight_bytes=frozen.quantized + frozen.unquantized,
        param_bytes=param_bytes, grad_bytes=grad_bytes, compute_bytes=recipe.compute_bytes,
        states_at_param_dtype=opt.state_bytes(optimizer, adapters, adapter_bytes)
        + opt.state_bytes(optimizer, copies, copy_bytes),
        states_fp32=opt.state_bytes(optimizer, plan.tensors, 4), largest_layer_params=largest_module_params(spec),
        total_params=spec.params.total, module_params=forward_module_params(spec),
        frozen_replicated_bytes=0.0 if framework.fsdp_shards_quant_state else quant_state_bytes(frozen, fmt))
    states = shard_states(inputs, sharding=options.sharding, gpus=gpus, offload=options.offload,
                          gpus_per_node=options.gpus_per_node,
                          buffer_factor=catalog.deepspeed.additional_buffer_factor,
                          bucket_elements=options.zero_bucket_elements or catalog.deepspeed.reduce_bucket_size,
                          overlap_comm=catalog.deepspeed.overlap_comm_stage12 if options.overlap_comm is None
                          else options.overlap_comm,
                          max_live_parameters=catalog.deepspeed.stage3_max_live_parameters,
                          max_reuse_distance=catalog.deepspeed.stage3_max_reuse_distance)
    frozen_share = states.frozen_weights / inputs.frozen_weight_bytes if inputs.frozen_weight_bytes else 0.0
    on_gpu_step = options.offload == "none"
    divisor = gpus if options.sharding == "fsdp" else 1
    # DeepSpeed steps with its own fused Adam kernels (no temporaries); torch optimizers as catalogued.
    temporaries = 0.0 if deepspeed or not on_gpu_step else \
        (opt.step_temporary_bytes(optimizer, adapters, adapter_bytes)
         + opt.step_temporary_bytes(optimizer, copies, copy_bytes)) / divisor
    acts, acts_upper, settings = activation_bounds(spec, recipe, framework, fmt, options, plan, upcast, seq)
    vocab = 0 if spec.architecture == "encoder" else spec.vocab_size
    loss = loss_memory(vocab=vocab, hidden=spec.hidden_size, impl=framework.loss, compute_bytes=recipe.compute_bytes,
                       fp32_loss=framework.loss_upcast or recipe.autocast,
                       softcap=bool(spec.config.get("final_logit_softcapping")), compiled=options.compile)
    if options.compile and framework.loss != "chunked-8":
        warnings.append("compile: only torchtune's compiled chunked cross-entropy is modelled; other effects of "
                        "torch.compile on saved activations are not")
    if spec.architecture == "encoder-decoder":  # logits of the target positions only
        loss = replace(loss, per_token=loss.per_token * (options.target_len or seq) / seq)
    dequant = frozen.weights.largest_quantized_tensor_params * recipe.compute_bytes if mode == "qlora" else 0.0
    saved_dequant = saved_dequantized_bytes(spec, frozen, plan, recipe, options.grad_checkpointing) \
        if mode == "qlora" and framework.dequantized_weight_saved else 0.0
    step = StepInputs(
        plan=plan, recipe=recipe, optimizer=optimizer, fmt=fmt, weights=frozen.weights,
        frozen_quantized=frozen.quantized * frozen_share, frozen_unquantized=frozen.unquantized * frozen_share,
        states=states, step_temporaries=temporaries,
        autocast_copies=autocast_copy_bytes(plan, recipe, frozen, upcast, options.sharding, adapter_bytes,
                                            lm_head_calls(framework.loss, batch, seq)),
        dequant_workspace=dequant, saved_dequantized=saved_dequant,
        activations=acts, activations_upper=acts_upper, loss=loss, grad_accum=options.grad_accum, optimizer_in_backward=options.optimizer_in_backward,
        largest_grad=plan.largest_tensor * grad_bytes, sharding=options.sharding, gpus=gpus,
        framework=framework.name, module_loading=options.cuda_module_loading,
        compute_capability=gpu.compute_capability_tuple if gpu is not None else None,
        upcast=upcast, resident_tensors=_resident_tensors(spec, plan, optimizer.state_tensors, acts.grad_layers),
        init_quantize_cached=framework.init_quantize_workspace * frozen.weights.largest_quantized_tensor_params
        if mode == "qlora" else 0.0,
        grads_kept_between_steps=not framework.zero_grad_set_to_none and options.sharding in ("none", "ddp")
        and not options.optimizer_in_backward,
        activation_segment_waste=allocator_waste(acts.tensor_sizes(batch, seq, options.grad_checkpointing)),
        state_segment_waste=allocator_waste(_state_tensor_sizes(plan, grad_bytes, adapter_bytes, optimizer, states,
                                                                inputs)))
    return PreparedTraining(
        spec=spec, fmt=fmt, mode=mode, batch=batch, seq_len=seq, seq_note=seq_note, gpus=gpus, gpu=gpu,
        options=options, recipe=recipe, optimizer=optimizer, framework=framework, plan=plan, states=states,
        activations=acts, settings=settings, param_bytes=param_bytes, raw=step_terms(step), warnings=warnings)

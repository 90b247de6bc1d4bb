"""The memory terms of one fine-tuning step on one GPU, and the phases they are alive in.

Phases (moments of a steady-state step; the peak is the largest, see ``planner.memory.phases``):

- ``loss``: the forward pass is done, every layer's saved tensors are alive and the loss and its
  backward hold the logits (:mod:`planner.memory.training.logits`);
- ``backward``: the last layer's backward: the saved tensors, the layer recomputed by checkpointing,
  its gradient workspace, a dequantized 4-bit weight, DeepSpeed's gradient buckets;
- ``step``: ``optimizer.step()``: weights, all gradients, optimizer states and step temporaries.

Gradients of earlier micro-batches are alive in ``loss`` and ``backward`` only with gradient
accumulation (``zero_grad(set_to_none=True)`` frees them after each step). Optimizer states exist in
every phase (after the first step). Weights, overhead and the allocator reserve come from the shared
inference builders (:mod:`planner.memory.weights`, :mod:`planner.memory.overhead`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from planner.formats import WeightFormat
from planner.memory.engines import get_engine
from planner.memory.overhead import allocator_slack_term, cublas_workspace_term, cuda_context_term, nccl_term
from planner.memory.phases import Coeffs, PhaseSpec, RawTerm
from planner.memory.training.activation_memory import ActivationMemory
from planner.memory.training.catalog import Optimizer, Recipe, load_catalog
from planner.memory.training.logits import LossMemory
from planner.memory.training.sharding import ShardedStates
from planner.memory.training.trainable import TrainablePlan
from planner.memory.weights import WeightBytes

LOSS, BACKWARD, STEP = "loss", "backward", "step"
PHASES = (
    PhaseSpec(LOSS, "forward done: all saved activations + logits and the loss backward"),
    PhaseSpec(BACKWARD, "backward of the last layer: saved activations + recomputed layer + gradient workspace"),
    PhaseSpec(STEP, "optimizer.step(): weights + gradients + optimizer states + step temporaries"),
)
ALL = frozenset({LOSS, BACKWARD, STEP})
FORWARD_BACKWARD = frozenset({LOSS, BACKWARD})
ACTIVATION_SOURCE = ("saved tensors per layer, op by op (planner.memory.training.activations; matches "
                     "torch.autograd saved_tensors_hooks on transformers Llama/GPT-2/BERT); Korthikanti et al. 2022")


@dataclass(frozen=True)
class StepInputs:
    """Everything the term builders need (validated and resolved by the estimate)."""

    plan: TrainablePlan
    recipe: Recipe
    optimizer: Optimizer
    fmt: WeightFormat
    weights: WeightBytes
    frozen_quantized: float
    frozen_unquantized: float
    states: ShardedStates
    step_temporaries: float
    autocast_copies: float
    dequant_workspace: float
    saved_dequantized: float
    activations: ActivationMemory
    activations_upper: ActivationMemory
    loss: LossMemory
    grad_accum: int
    optimizer_in_backward: bool
    largest_grad: float
    sharding: str
    gpus: int
    framework: str
    module_loading: str
    compute_capability: tuple[int, int] | None
    resident_tensors: int
    upcast: bool
    activation_segment_waste: float
    state_segment_waste: float
    grads_kept_between_steps: bool = False
    init_quantize_cached: float = 0.0


def _const(key: str, label: str, value: float, phases: frozenset[str], formula: str, source: str,
           **extra) -> RawTerm:
    return RawTerm(key, label, Coeffs(const=value), formula=formula, source=source, phases=phases, **extra)


def weight_terms(s: StepInputs) -> list[RawTerm]:
    """Frozen base weights (in their format), trainable weights, adapters and autocast copies."""
    terms = []
    shard = f" / {s.gpus} GPUs" if s.sharding in ("zero3", "fsdp") and s.gpus > 1 else ""
    if s.frozen_quantized:
        terms.append(_const("weights_quantized", f"frozen base weights ({s.fmt.name}){shard}", s.frozen_quantized, ALL,
                            "sum over quantized tensors of N x bits/8 + scales (formats.toml)", s.fmt.source))
    if s.frozen_unquantized:
        label = (f"frozen {s.fmt.name} weights" if s.fmt.family == "float" else
                 "frozen unquantized weights (embeddings, norms, ...)" +
                 (" upcast to fp32 by peft.prepare_model_for_kbit_training" if s.upcast else ""))
        terms.append(_const("weights_unquantized", label + shard, s.frozen_unquantized, ALL,
                            "params x bytes per element", s.fmt.source))
    if s.states.trainable_weights:
        lora = s.plan.mode in ("lora", "qlora")
        key = "adapters" if lora else "weights_unquantized"
        label = ("LoRA adapters" + (" + trainable embedding copies" if s.plan.trainable_copy_params else "")
                 if lora else "trainable weights")
        terms.append(_const(key, f"{label} ({s.recipe.name})", s.states.trainable_weights, ALL,
                            s.states.formulas.get("trainable_weights", "P x param_bytes"), s.recipe.source,
                            inputs={"trainable_params": s.plan.trainable_params}))
    if s.autocast_copies:
        terms.append(_const("weights_unquantized", f"autocast {s.recipe.compute_dtype} copies of fp32 Linear weights",
                            s.autocast_copies, FORWARD_BACKWARD, "linear params x compute bytes",
                            "torch.autocast casts each fp32 weight per matmul and the copy is saved for backward"))
    return terms


def state_terms(s: StepInputs) -> list[RawTerm]:
    """Gradients, master weights, optimizer states, step temporaries and communication buffers."""
    st, terms = s.states, []
    if s.optimizer_in_backward:
        terms.append(_const("gradients", "gradient of one tensor (optimizer runs in backward)", s.largest_grad,
                            frozenset({BACKWARD}), "largest trainable tensor x grad bytes",
                            "torchtune optimizer_in_bwd: each parameter is stepped and its gradient freed in backward"))
    elif st.gradients:
        # ZeRO-3's gradient partition is a buffer allocated once (stage3.py grad_partitions_flat_buffer);
        # zero_grad(set_to_none=False) (PyTorch < 2.0) keeps zeroed gradients from one step to the next
        kept_all_step = s.grad_accum > 1 or s.sharding == "zero3" or s.grads_kept_between_steps
        phases = ALL if kept_all_step else frozenset({STEP})
        kept = " (kept zeroed between steps: zero_grad(set_to_none=False))" if s.grads_kept_between_steps else ""
        terms.append(_const("gradients", "gradients" + (" (accumulated across micro-batches)" if s.grad_accum > 1 else kept),
                            st.gradients, phases, st.formulas.get("gradients", "P x grad_bytes"), s.recipe.source))
    if st.master_weights:
        terms.append(_const("optimizer_states", "fp32 master weights (DeepSpeed)", st.master_weights, ALL,
                            st.formulas.get("master_weights", ""), "DeepSpeed mixed-precision ZeRO optimizer"))
    if st.optimizer_states:
        paged = s.optimizer.paged
        terms.append(_const("optimizer_states", f"optimizer states ({s.optimizer.name})" +
                            (" in CUDA unified memory (pages out to host RAM under pressure)" if paged else ""),
                            st.optimizer_states, ALL, st.formulas.get("optimizer_states", "per-tensor states"),
                            s.optimizer.source, counted_in="device" if paged else "allocated"))
    if st.step_buffers:
        terms.append(_const("gradients", "fp32 gradients of one optimizer sub group (DeepSpeed ZeRO-3 step)",
                            st.step_buffers, frozenset({STEP}), st.formulas.get("step_buffers", ""),
                            "deepspeed/runtime/zero/stage3.py _prepare_fp32_grad_for_sub_group: "
                            "flatten(averaged_gradients).to(fp32) per sub group (sub_group_size, default 1e9)"))
    if s.step_temporaries:
        terms.append(_const("optimizer_states", "optimizer step temporaries", s.step_temporaries, frozenset({STEP}),
                            f"{s.optimizer.step_temporaries} x {s.optimizer.step_temporaries_scope} trainable tensors",
                            s.optimizer.source))
    if st.buffers:
        phases = {"ddp": ALL, "zero1": frozenset({BACKWARD}), "zero2": frozenset({BACKWARD})}.get(
            s.sharding, FORWARD_BACKWARD)
        upper = Coeffs(const=st.buffers_upper) if st.buffers_upper is not None else None
        terms.append(_const("communication_buffers", f"{s.sharding} buffers", st.buffers, phases,
                            st.formulas.get("buffers", ""), "torch DDP docs (gradient_as_bucket_view); DeepSpeed "
                            "stage_1_and_2.py ipg_buffer / stage3 estimator (upper: stage3_max_live_parameters "
                            "gathered); FSDP FULL_SHARD unit all-gather", upper=upper))
    return terms


def activation_terms(s: StepInputs) -> list[RawTerm]:
    a, up, terms = s.activations, s.activations_upper, []
    ckpt = "checkpointed layer inputs" if a.recompute_per_token else "tensors saved for backward"
    terms.append(RawTerm("activations", f"{ckpt} of {a.grad_layers} layers", Coeffs(
        per_token=a.stored_per_token, per_token_sq=a.stored_per_token_sq), formula="batch x s x (per-token bytes of "
        "all layers + s x per-token-squared bytes of eager attention)", source=ACTIVATION_SOURCE,
        phases=FORWARD_BACKWARD, tokens="total", inputs={"bytes_per_token_per_layer": round(a.layer_per_token, 1)},
        upper=Coeffs(per_token=up.stored_per_token, per_token_sq=up.stored_per_token_sq)))
    if a.recompute_per_token or a.recompute_per_token_sq:
        terms.append(RawTerm("activations", "one layer recomputed for backward (checkpointing)", Coeffs(
            per_token=a.recompute_per_token, per_token_sq=a.recompute_per_token_sq), formula="one layer's saved tensors",
            source="Chen et al. 2016; transformers gradient checkpointing", phases=frozenset({BACKWARD}), tokens="total",
            upper=Coeffs(per_token=up.recompute_per_token, per_token_sq=up.recompute_per_token_sq)))
    if a.workspace_per_token:
        upper = max(a.workspace_per_token, a.layer_per_token)
        terms.append(RawTerm("activations", "gradient workspace of the layer in backward", Coeffs(
            per_token=a.workspace_per_token), formula="max(3F or 2F MLP grads, flash-attention dq/dk/dv/dout + fp32 dq or eager "
            "dq/dk/dv + 2 fp32 heads x s score grads) + 2 x residual grads", source="planner.memory.training.activations.backward_workspace",
            phases=frozenset({BACKWARD}), tokens="total", upper=Coeffs(per_token=upper)))
    if s.dequant_workspace:
        terms.append(_const("activations", "dequantized weight of the largest 4-bit Linear (transient)",
                            s.dequant_workspace, frozenset({BACKWARD}), "largest quantized params x compute bytes",
                            "bitsandbytes MatMul4Bit / GPTQ dequantize the weight for each matmul in forward and backward"))
    if s.saved_dequantized:
        phases = frozenset({BACKWARD}) if s.activations.recompute_per_token else FORWARD_BACKWARD
        terms.append(_const("activations", "dequantized 4-bit weights saved for backward", s.saved_dequantized,
                            phases, "quantized Linear params of the layers holding saved tensors x compute bytes",
                            "torch.matmul on a dequantized weight saves the weight for the input gradient "
                            "(auto-gptq QuantLinear without the exllama kernel)"))
    if s.loss.per_token or s.loss.per_seq:
        terms.append(RawTerm("logits", "logits and cross-entropy", Coeffs(per_seq=s.loss.per_seq,
                                                                            per_token=s.loss.per_token),
                             formula=s.loss.formula, source="planner.memory.training.logits", phases=frozenset({LOSS}),
                             tokens="total", inputs=s.loss.inputs))
    return terms


def runtime_terms(s: StepInputs) -> list[RawTerm]:
    """CUDA context, cuBLAS workspace, NCCL (data parallel) and the caching-allocator reserve."""
    engine = get_engine("litgpt" if s.framework == "litgpt" else "hf")
    terms = [cuda_context_term(engine, ALL, module_loading=s.module_loading),
             cublas_workspace_term(s.compute_capability, ALL)]
    nccl = nccl_term(min(s.gpus, 8), ALL) if s.gpus > 1 else None
    if nccl is not None:
        terms.append(replace(nccl, label=f"NCCL communicator buffers ({s.gpus} GPUs, data parallel)"))
    terms.append(allocator_slack_term(s.weights.allocator_waste, ALL))
    if s.init_quantize_cached:
        terms.append(RawTerm("allocator_reserve", "blocks cached from load-time 4-bit quantization of the largest "
                             "weight", Coeffs(const=s.init_quantize_cached),
                             formula="init_quantize_workspace bytes x largest quantized weight's elements",
                             source="[frameworks] init_quantize_workspace in planner/data/training.toml (torchao 0.1 "
                             "to_nf4); freed blocks stay reserved by the CUDA caching allocator", phases=ALL,
                             counted_in="reserved"))
    # Segment packing of same-size tensors (planner.memory.weights.allocator_waste) assumes no mixing of
    # sizes within a 20 MiB segment, so it bounds the waste from above: it only feeds the safe bound.
    waste = s.state_segment_waste + s.activation_segment_waste
    if waste:
        terms.append(RawTerm("allocator_reserve", "allocator segments of gradients, states and activations (upper "
                             "bound only)", Coeffs(), formula="segment_waste per tensor size x count",
                             source="PyTorch CUDACachingAllocator.cpp segment sizes (planner.memory.weights."
                             "allocator_waste)", phases=FORWARD_BACKWARD, counted_in="reserved",
                             upper=Coeffs(const=waste)))
    allocator = load_catalog().allocator
    live = s.activations_upper.live_tensors + len(s.plan.tensors)
    terms.append(RawTerm("allocator_reserve", "whole cached blocks handed to saved tensors (upper bound only)",
                         Coeffs(), formula=f"{allocator.unsplit_remainder_mib:g} MiB x live saved tensors",
                         source=allocator.source, phases=FORWARD_BACKWARD, inputs={"live_tensors": live},
                         upper=Coeffs(const=live * allocator.unsplit_remainder_mib * 2**20)))
    return terms


def cached_block_terms(terms: list[RawTerm]) -> list[RawTerm]:
    """Upper bound of the caching allocator's reserve in each phase: blocks of tensors that live only in
    the other phases (logits, recomputed layer, step temporaries, buckets) stay cached after they are
    freed; in the worst case the phase cannot reuse any of them (CUDACachingAllocator never returns
    memory to the device without empty_cache)."""
    extra = []
    for phase in (LOSS, BACKWARD, STEP):
        others = Coeffs()
        for term in terms:
            if term.counted_in == "allocated" and phase not in term.phases and term.phases - {phase}:
                others = others + term.upper_coeffs
        if any(others.as_tuple()):
            extra.append(RawTerm("allocator_reserve", "blocks cached from the other phases (upper bound only)",
                                 Coeffs(), formula="sum of the tensors alive only in other phases",
                                 source="PyTorch CUDACachingAllocator: freed blocks stay reserved", phases=frozenset({phase}),
                                 tokens="total", counted_in="reserved", upper=others))
    return extra


def step_terms(s: StepInputs) -> list[RawTerm]:
    """Every term of one training step on one GPU."""
    terms = weight_terms(s) + state_terms(s) + activation_terms(s) + runtime_terms(s)
    return terms + cached_block_terms(terms)

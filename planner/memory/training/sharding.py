"""Model states (weights, gradients, master weights, optimizer states) per GPU under data parallelism.

``P`` = trainable parameters, ``N`` = GPUs, ``W_f`` = bytes of frozen weights in their load format.

- ``none`` / ``ddp``: every GPU holds everything. DDP with ``gradient_as_bucket_view=False`` (the
  default) also keeps its all-reduce buckets, one more copy of the gradients (torch DDP docs).
- ``zero1`` / ``zero2`` / ``zero3`` (DeepSpeed, Rajbhandari et al. 2020 "ZeRO", section 5): with a
  16-bit compute dtype DeepSpeed keeps 16-bit parameters and gradients plus fp32 master weights, an
  fp32 gradient partition and the optimizer states; ZeRO-1 partitions the fp32 part, ZeRO-2 also the
  gradients, ZeRO-3 also the parameters. For AdamW this is DeepSpeed's own estimator
  ``2P + 18P/N`` (ZeRO-2). ZeRO-3 differs from its estimator's ``18P/N``: stage3.py keeps the gradient
  partition in the 16-bit gradient dtype (``grad_partitions_flat_buffer``) and makes the fp32 gradient
  only during the step, one ``sub_group_size`` group at a time (default 1e9 elements): ``16P/N`` resident
  plus ``min(sub_group_size, P/N) x 6`` bytes in the step, and ``4 x largest_layer`` buffers. Stages 1-2 allocate the
  contiguous-gradient bucket (``reduce_bucket_size`` elements, twice with ``overlap_comm``) in
  ``backward()``. CPU offload of the optimizer keeps only 16-bit parameters on the GPU and puts
  ``P x max(4N, 16) x 1.5`` (ZeRO-2) or ``P x 16 x 1.5`` (ZeRO-3) bytes in host RAM per node;
  parameter offload (ZeRO-3) leaves only the largest layer on the GPU and ``P x 18 x 1.5`` in host RAM.
  Frozen weights are replicated under ZeRO-1/2 and partitioned under ZeRO-3. The fp32 partition the
  optimizer steps is always a copy, also when the model itself is fp32 (DeepSpeed builds it with
  ``.clone().float().detach()`` of the parameter partition), so a pure-fp32 ZeRO run keeps 4 more
  bytes per trained parameter / N than the model dtype suggests. ZeRO-3 keeps a gathered parameter
  after its use when the same parameter is used again within ``stage3_max_reuse_distance`` parameters
  (:func:`zero3_retained_params`): the last layers of the forward stay gathered for their backward.
- ``fsdp`` (PyTorch FSDP ``FULL_SHARD``, one unit per decoder layer): weights, gradients and states
  in the recipe's dtypes divided by N, plus the unsharded parameters of the unit in use and the one
  prefetched (frozen weights gathered as stored, e.g. 4-bit for QLoRA) and the unsharded gradients of
  the unit's trainable parameters; ``CPUOffload(offload_params=True)`` moves
  parameters, gradients and the optimizer step to host RAM.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from planner.errors import InvalidRequestError

SHARDING: tuple[str, ...] = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp")
OFFLOAD: tuple[str, ...] = ("none", "optimizer", "params")
Sharding = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp"]


@dataclass(frozen=True)
class StateInputs:
    """Unsharded quantities the sharding rules divide."""

    trainable_params: int
    frozen_weight_bytes: float
    param_bytes: float
    grad_bytes: float
    compute_bytes: int
    states_at_param_dtype: float
    states_fp32: float
    largest_layer_params: int
    total_params: int = 0
    frozen_replicated_bytes: float = 0.0
    module_params: tuple[int, ...] = ()  # parameters of each module in forward order (ZeRO-3 retention)


@dataclass(frozen=True)
class ShardedStates:
    """Bytes per GPU (and host RAM per node) with the formula used for each part."""

    trainable_weights: float
    frozen_weights: float
    gradients: float
    master_weights: float
    optimizer_states: float
    buffers: float
    host: float
    formulas: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    buffers_upper: float | None = None
    step_buffers: float = 0.0  # alive only during the optimizer step


def validate(sharding: str, gpus: int, offload: str) -> list[str]:
    """Check the combination; returns warnings for legal but pointless ones."""
    if sharding not in SHARDING:
        raise InvalidRequestError(f"unknown sharding {sharding!r}; use one of {', '.join(SHARDING)}.")
    if offload not in OFFLOAD:
        raise InvalidRequestError(f"unknown offload {offload!r}; use one of {', '.join(OFFLOAD)}.")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InvalidRequestError(f"gpus must be a positive integer, got {gpus!r}.")
    if sharding == "none" and gpus > 1:
        raise InvalidRequestError(
            f"gpus={gpus} needs a data-parallel strategy: sharding='ddp' (replicas), 'zero1', 'zero2', "
            "'zero3' or 'fsdp' (sharded model states).")
    if offload == "optimizer" and sharding not in ("zero1", "zero2", "zero3"):
        hint = " FSDP offloads parameters, gradients and optimizer together: use offload='params'." \
            if sharding == "fsdp" else ""
        raise InvalidRequestError(f"offload='optimizer' needs DeepSpeed ZeRO (zero1/zero2/zero3), not {sharding!r}.{hint}")
    if offload == "params" and sharding not in ("zero3", "fsdp"):
        raise InvalidRequestError(f"offload='params' needs sharded parameters (zero3 or fsdp), not {sharding!r}.")
    if sharding in ("zero1", "zero2", "zero3", "fsdp") and gpus == 1 and offload == "none":
        return [f"{sharding} on 1 GPU divides nothing; it only adds its buffers."]
    return []


def shard_states(inputs: StateInputs, *, sharding: str, gpus: int, offload: str = "none", gpus_per_node: int = 8,
                 buffer_factor: float = 1.5, bucket_elements: int = 500_000_000,
                 overlap_comm: bool = False, max_live_parameters: int = 1_000_000_000,
                 max_reuse_distance: int = 1_000_000_000, sub_group_size: int = 1_000_000_000) -> ShardedStates:
    """Per-GPU model states for ``sharding`` over ``gpus`` (see the module docstring)."""
    validate(sharding, gpus, offload)
    n, p = gpus, inputs.trainable_params
    if sharding in ("none", "ddp"):
        grads = p * inputs.grad_bytes
        buckets = grads if sharding == "ddp" and n > 1 else 0.0
        return ShardedStates(p * inputs.param_bytes, inputs.frozen_weight_bytes, grads, 0.0,
                             inputs.states_at_param_dtype, buckets, 0.0,
                             {"gradients": "P x grad_bytes", "buffers": "DDP buckets = P x grad_bytes"})
    if sharding == "fsdp":
        return _fsdp(inputs, n, offload)
    states = _zero(inputs, int(sharding[-1]), n, offload, max(1, -(-n // gpus_per_node)), min(n, gpus_per_node),
                   buffer_factor, bucket_elements, overlap_comm, sub_group_size)
    if sharding == "zero3":
        gathered = _gathered_bytes_per_param(inputs)[0]
        retained = zero3_retained_params(inputs.module_params, max_reuse_distance) * gathered
        buffers = states.buffers + retained
        formulas = {**states.formulas, "buffers": states.formulas["buffers"] + " + parameters kept gathered "
                    "for reuse within stage3_max_reuse_distance x compute bytes"}
        # at most stage3_max_live_parameters gathered parameters (prefetched or kept) at once
        resident = min(max_live_parameters, inputs.total_params or max_live_parameters) * inputs.compute_bytes
        return replace(states, buffers=buffers, formulas=formulas,
                       buffers_upper=max(buffers, states.buffers + resident))
    return states


def zero3_retained_params(module_params: tuple[int, ...] | list[int], max_reuse_distance: int) -> int:
    """Parameters ZeRO-3 keeps gathered between a module's use in forward and its use in backward.

    DeepSpeed's ``PartitionedParameterCoordinator.__params_to_release`` (deepspeed/runtime/zero/
    partitioned_param_coordinator.py) walks the recorded module trace from the current step and does not
    release a parameter that reappears before ``stage3_max_reuse_distance`` parameters (default 1e9,
    zero/config.py) have been traversed. A module whose forward is followed by ``A`` parameters of
    later modules meets its backward after ``2 A`` parameters (forward to the end, backward back), so it
    stays gathered when ``2 A < distance``: the tail of the network (the modules of about the last
    ``distance / 2`` parameters). The same rule keeps the head gathered from the end of one backward to
    the next forward; the larger of the two sets is resident at once.
    """
    def kept(order) -> int:
        retained = after = 0
        for params in order:
            if 2 * after < max_reuse_distance:
                retained += params
            after += params
        return retained
    modules = list(module_params)
    return max(kept(reversed(modules)), kept(modules)) if modules else 0


def _zero(inputs: StateInputs, stage: int, n: int, offload: str, nodes: int, per_node: int, factor: float,
          bucket_elements: int, overlap_comm: bool, sub_group_size: int = 1_000_000_000) -> ShardedStates:
    p, low = inputs.trainable_params, inputs.compute_bytes
    mixed = low < 4
    # the optimizer's fp32 partition is a .clone().float() of the parameter partition, fp32 models included
    master, fp32_grads = 4, (4 if mixed else 0)
    largest = 4 * inputs.largest_layer_params  # DeepSpeed: fp16 param + fp16 grad of the largest layer
    params = p * low / (n if stage == 3 else 1)
    frozen = inputs.frozen_weight_bytes / (n if stage == 3 else 1)
    grads = p * low / (n if stage >= 2 else 1)
    buckets = bucket_elements * low * (2 if overlap_comm else 1) if stage < 3 else float(largest)
    formulas = {"trainable_weights": f"P x {low}" + (" / N" if stage == 3 else ""),
                "gradients": _zero_gradient_formula(stage, low, mixed),
                "master_weights": f"P x {master} / N", "optimizer_states": "states(fp32) / N",
                "buffers": "reduce_bucket_size x bytes x (2 if overlap_comm)" if stage < 3
                else "4 x largest_layer_params"}
    if offload == "none":
        if stage == 3:
            # stage3.py: the reduce-scattered gradients live in grad_partitions_flat_buffer (torch.zeros of the
            # partition in the gradient dtype, allocated once); the step builds the fp32 gradient one sub group
            # at a time (_prepare_fp32_grad_for_sub_group: flatten(...).to(fp32)), not a resident fp32 partition
            step = min(sub_group_size, -(-p // n)) * (4 + (low if mixed else 0))
            formulas["step_buffers"] = "min(sub_group_size, P / N) x (4 + 16-bit bytes)"
            return ShardedStates(params, frozen, grads, p * master / n, inputs.states_fp32 / n, buckets, 0.0,
                                 formulas, step_buffers=step)
        return ShardedStates(params, frozen, grads + p * fp32_grads / n, p * master / n, inputs.states_fp32 / n,
                             buckets, 0.0, formulas)
    host_per_param = master + fp32_grads + (inputs.states_fp32 / p if p else 0.0)
    if offload == "params":  # ZeRO-3 only (validated)
        host = p * (host_per_param + low) * factor / nodes
        formulas.update(host="P x 18 x 1.5 / nodes (AdamW)", trainable_weights="on host", gradients="on host")
        return ShardedStates(0.0, frozen, 0.0, 0.0, 0.0, float(largest), host, formulas,
                             ("ZeRO-3 parameter offload: only the layer being computed is on the GPU",))
    if stage == 3:
        host = p * host_per_param * factor / nodes
        formulas.update(host="P x 16 x 1.5 / nodes (AdamW)")
    else:
        host = p * max(4 * n, host_per_param) * factor
        formulas.update(host="P x max(4N, 16) x 1.5 (AdamW)")
    return ShardedStates(params, frozen, buckets if stage < 3 else 0.0, 0.0, 0.0, float(largest) if stage == 3 else 0.0,
                         host, formulas, ("ZeRO-Offload: gradients stream to host RAM through the buckets",))


def _gathered_bytes_per_param(inputs: StateInputs) -> tuple[float, float]:
    """(bytes per gathered parameter, frozen share of the parameters). Frozen parameters are all-gathered in
    their storage format (a quantized base as stored: torchao NF4Tensor.fsdp_pre_all_gather sends the packed
    4-bit data and scales; DeepSpeed ZeRO-3 gathers a bitsandbytes Params4bit as stored), never wider than the
    compute dtype; trainable ones in the compute dtype."""
    p, c = inputs.trainable_params, inputs.compute_bytes
    total = max(inputs.total_params, p, 1)
    frozen_share = max(0.0, 1.0 - p / total)
    frozen_bytes = min(c, inputs.frozen_weight_bytes / (frozen_share * total)) if frozen_share else 0.0
    return (1 - frozen_share) * c + frozen_share * frozen_bytes, frozen_share


def _fsdp(inputs: StateInputs, n: int, offload: str) -> ShardedStates:
    p, unit = inputs.trainable_params, inputs.largest_layer_params
    # only the trainable share of a unit has unsharded gradients
    per_param, frozen_share = _gathered_bytes_per_param(inputs)
    gather = unit * per_param
    buffers = 2 * gather + unit * (1 - frozen_share) * inputs.grad_bytes
    formulas = {"trainable_weights": "P x param_bytes / N", "gradients": "P x grad_bytes / N",
                "optimizer_states": "states / N",
                "buffers": "2 x unit x gathered bytes/param (in use + prefetched; frozen weights as stored) "
                           "+ trainable share of the unit x grad_bytes"}
    replicated = inputs.frozen_replicated_bytes
    sharded_frozen = inputs.frozen_weight_bytes - replicated
    if replicated:
        formulas["frozen_weights"] = "packed frozen weights / N + quantization state on every GPU"
    if offload == "params":
        host = p * (inputs.param_bytes + inputs.grad_bytes) + inputs.states_at_param_dtype + sharded_frozen
        formulas.update(host="P x (param + grad bytes) + states + frozen weights")
        return ShardedStates(0.0, replicated, 0.0, 0.0, 0.0, buffers, host, formulas,
                             ("FSDP CPUOffload: parameters, gradients and the optimizer step live in host RAM",))
    return ShardedStates(p * inputs.param_bytes / n, sharded_frozen / n + replicated, p * inputs.grad_bytes / n, 0.0,
                         inputs.states_at_param_dtype / n, buffers, 0.0, formulas)


def _zero_gradient_formula(stage: int, low: int, mixed: bool) -> str:
    if stage == 3:
        return f"P x {low} / N (gradient partition buffer)"
    parts = [f"P x {low}" + (" / N" if stage >= 2 else "")]
    if mixed:
        parts.append("P x 4 / N (fp32 partition)")
    return " + ".join(parts)

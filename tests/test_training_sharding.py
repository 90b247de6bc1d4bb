"""Model states per GPU: DDP, DeepSpeed ZeRO 1/2/3 (with offload) and FSDP."""

from __future__ import annotations

import pytest

from planner.errors import InvalidRequestError
from planner.memory.training.sharding import StateInputs, shard_states

P = 1_000_000_000
LARGEST = 100_000_000


def amp_adamw(**overrides) -> StateInputs:
    values = dict(trainable_params=P, frozen_weight_bytes=0.0, param_bytes=4, grad_bytes=4, compute_bytes=2,
                  states_at_param_dtype=8.0 * P, states_fp32=8.0 * P, largest_layer_params=LARGEST)
    return StateInputs(**{**values, **overrides})


def on_gpu(states) -> float:
    return states.trainable_weights + states.frozen_weights + states.gradients + states.master_weights \
        + states.optimizer_states


def test_single_gpu_amp_adamw_is_16_bytes_per_parameter():
    assert on_gpu(shard_states(amp_adamw(), sharding="none", gpus=1)) == 16 * P


def test_ddp_replicates_and_keeps_a_bucket_copy_of_the_gradients():
    states = shard_states(amp_adamw(), sharding="ddp", gpus=4)
    assert on_gpu(states) == 16 * P and states.buffers == 4 * P


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 64])
def test_zero2_matches_deepspeeds_estimator(gpus):
    # estimate_zero2_model_states_mem_needs: gpu = 2P + 18P/N
    assert on_gpu(shard_states(amp_adamw(), sharding="zero2", gpus=gpus)) == pytest.approx(2 * P + 18 * P / gpus)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 64])
def test_zero3_divides_model_states_by_n_plus_the_largest_layer(gpus):
    states = shard_states(amp_adamw(), sharding="zero3", gpus=gpus)
    # 16-bit params 2 + 16-bit gradient partition buffer 2 + fp32 master 4 + AdamW 8 bytes per parameter / N
    assert on_gpu(states) == pytest.approx(16 * P / gpus)
    assert states.buffers == 4 * LARGEST
    # the step's fp32 gradient of one sub group (default 1e9 elements) and its 16-bit flat copy
    assert states.step_buffers == pytest.approx(min(1e9, P / gpus) * (4 + 2))


def test_more_gpus_under_zero3_never_increase_per_gpu_states():
    totals = [on_gpu(shard_states(amp_adamw(frozen_weight_bytes=3e9), sharding="zero3", gpus=n)) for n in range(1, 65)]
    assert all(later <= earlier for earlier, later in zip(totals, totals[1:]))


def test_zero_offload_host_ram_matches_deepspeed():
    zero2 = shard_states(amp_adamw(), sharding="zero2", gpus=8, offload="optimizer")
    assert zero2.host == pytest.approx(P * max(4 * 8, 16) * 1.5)
    assert zero2.trainable_weights == 2 * P and zero2.optimizer_states == 0
    zero3 = shard_states(amp_adamw(), sharding="zero3", gpus=4, offload="optimizer")
    assert zero3.host == pytest.approx(P * 16 * 1.5) and zero3.trainable_weights == 2 * P / 4
    params = shard_states(amp_adamw(), sharding="zero3", gpus=4, offload="params")
    assert params.host == pytest.approx(P * 18 * 1.5) and on_gpu(params) == 0


def test_frozen_weights_replicated_by_zero2_partitioned_by_zero3():
    inputs = amp_adamw(frozen_weight_bytes=8e9)
    assert shard_states(inputs, sharding="zero2", gpus=4).frozen_weights == 8e9
    assert shard_states(inputs, sharding="zero3", gpus=4).frozen_weights == 2e9


def test_fsdp_divides_the_recipes_bytes():
    states = shard_states(amp_adamw(), sharding="fsdp", gpus=8)
    assert on_gpu(states) == pytest.approx(16 * P / 8)
    assert states.buffers == 2 * LARGEST * 2 + LARGEST * 4


@pytest.mark.parametrize("sharding,gpus,offload,message", [
    ("none", 4, "none", "needs a data-parallel strategy"),
    ("ddp", 2, "optimizer", "needs DeepSpeed ZeRO"),
    ("fsdp", 2, "optimizer", "use offload='params'"),
    ("zero2", 2, "params", "zero3 or fsdp"),
    ("zero4", 2, "none", "unknown sharding"),
    ("ddp", 0, "none", "positive integer"),
])
def test_bad_combinations_are_explained(sharding, gpus, offload, message):
    with pytest.raises(InvalidRequestError, match=message):
        shard_states(amp_adamw(), sharding=sharding, gpus=gpus, offload=offload)


def test_zero_fp32_model_still_keeps_a_cloned_fp32_partition():
    # stage_1_and_2.py / stage3.py: fp32 partition = parameter partition .clone().float(): 4 P / N more
    fp32 = amp_adamw(compute_bytes=4, param_bytes=4)
    states = shard_states(fp32, sharding="zero2", gpus=4)
    assert states.master_weights == pytest.approx(4 * P / 4)
    # params 4P (replicated) + grads 4P/4 + master 4P/4 + AdamW 8P/4
    assert on_gpu(states) == pytest.approx(4 * P + 16 * P / 4)


def test_zero3_retains_the_modules_reused_within_the_reuse_distance():
    from planner.memory.training.sharding import zero3_retained_params

    # forward order: embedding 100, six layers of 200, head 100; distance 1000. From the end: head (after 0)
    # kept, layer 6 (after 100: 200 < 1000) kept, layer 5 (after 300: 600) kept, layer 4 (after 500: 1000)
    # released -> tail 100 + 200 + 200 = 500. From the start: embedding (0) kept, layer 1 (after 100: 200)
    # kept, layer 2 (300: 600) kept, layer 3 (500: 1000) released -> head 500 as well.
    modules = (100, 200, 200, 200, 200, 200, 200, 100)
    assert zero3_retained_params(modules, 1000) == 500
    assert zero3_retained_params(modules, 10_000) == sum(modules)  # a small model stays gathered whole
    assert zero3_retained_params((), 1000) == 0


def test_zero3_buffers_add_the_retained_parameters_at_the_compute_dtype():
    modules = (100_000_000,) + (200_000_000,) * 8 + (100_000_000,)
    with_trace = shard_states(amp_adamw(module_params=modules), sharding="zero3", gpus=8,
                              max_reuse_distance=1_000_000_000)
    plain = shard_states(amp_adamw(), sharding="zero3", gpus=8)
    # tail: head 1e8 (after 0), layers with 2 x after < 1e9: after 1e8 (3e8 total), 3e8 (5e8) -> 5e8 params
    assert with_trace.buffers - plain.buffers == pytest.approx(500_000_000 * 2)
    assert with_trace.buffers_upper >= with_trace.buffers


def test_zero3_keeps_a_4bit_frozen_base_gathered_as_stored():
    # LoRA on a 4-bit base: 1e6 trainable (2 bytes when gathered) of 1e9 parameters, the frozen rest at 0.5 B
    total, trainable = 1_000_000_000, 1_000_000
    modules = (total // 10,) * 10  # every module reused within the distance below: the whole model retained
    inputs = amp_adamw(trainable_params=trainable, frozen_weight_bytes=0.5 * (total - trainable),
                       total_params=total, module_params=modules)
    plain = shard_states(amp_adamw(trainable_params=trainable, frozen_weight_bytes=0.5 * (total - trainable),
                                   total_params=total), sharding="zero3", gpus=4)
    states = shard_states(inputs, sharding="zero3", gpus=4, max_reuse_distance=10 * total)
    per_param = (trainable / total) * 2 + (1 - trainable / total) * 0.5
    assert states.buffers - plain.buffers == pytest.approx(total * per_param)

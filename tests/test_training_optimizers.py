"""Optimizer state bytes per trainable tensor (catalog facts) and step temporaries."""

from __future__ import annotations

import math

import pytest

from planner.errors import InvalidRequestError
from planner.memory.training.catalog import get_optimizer, get_recipe, load_catalog
from planner.memory.training.optimizers import state_bytes, step_temporary_bytes, tensor_state_bytes
from planner.memory.training.trainable import TensorShape

MATRIX = (4096, 4096)


def test_adamw_under_amp_is_8_bytes_of_states_and_12_with_the_fp32_weight():
    recipe = get_recipe("mixed")
    states = tensor_state_bytes(get_optimizer("adamw"), MATRIX, recipe.trainable_weight_bytes) / math.prod(MATRIX)
    assert states == 8
    assert states + recipe.trainable_weight_bytes == 12  # the fp32 weight is the master copy
    assert recipe.gradient_bytes == 4


def test_adamw_states_follow_the_parameter_dtype_in_pure_bf16():
    assert tensor_state_bytes(get_optimizer("adamw"), MATRIX, get_recipe("bf16-true").trainable_weight_bytes) \
        == 4 * math.prod(MATRIX)


def test_bnb_8bit_adam_is_two_bytes_plus_block_scales():
    n = math.prod(MATRIX)
    assert tensor_state_bytes(get_optimizer("adamw_bnb_8bit"), MATRIX, 4) == 2 * (n + n // 256 * 4)


def test_bnb_8bit_keeps_small_tensors_in_fp32():
    assert tensor_state_bytes(get_optimizer("adamw-8bit"), (4095,), 2) == 2 * 4095 * 4


def test_adafactor_factors_matrices_and_keeps_vectors_whole():
    adafactor = get_optimizer("adafactor")
    assert tensor_state_bytes(adafactor, (1024, 4096), 4) == (1024 + 4096) * 4
    assert tensor_state_bytes(adafactor, (4096,), 4) == 4096 * 4


def test_sgd_has_no_state_and_momentum_one():
    assert tensor_state_bytes(get_optimizer("sgd"), MATRIX, 4) == 0
    assert tensor_state_bytes(get_optimizer("sgd-momentum"), MATRIX, 4) == 4 * math.prod(MATRIX)


def test_step_temporaries_foreach_whole_list_loop_largest_fused_none():
    tensors = [TensorShape((1000, 1000), 3), TensorShape((10,), 5)]
    assert step_temporary_bytes(get_optimizer("adamw"), tensors, 4) == (3_000_000 + 50) * 4
    assert step_temporary_bytes(get_optimizer("adamw_hf"), tensors, 4) == 1_000_000 * 4
    assert step_temporary_bytes(get_optimizer("adamw_torch_fused"), tensors, 4) == 0
    # PyTorch 2.0's foreach AdamW builds denom out of place: sqrt(exp_avg_sq) and denom for the whole list
    assert step_temporary_bytes(get_optimizer("adamw-torch-2.0"), tensors, 2) == 2 * (3_000_000 + 50) * 2
    assert state_bytes(get_optimizer("adamw"), tensors, 4) == 8 * (3_000_000 + 50)


def test_unknown_optimizer_suggests_a_close_name():
    with pytest.raises(InvalidRequestError, match="Did you mean.*adamw"):
        get_optimizer("adamww")


def test_every_catalog_entry_names_its_source():
    catalog = load_catalog()
    for table in (catalog.recipes, catalog.optimizers, catalog.frameworks):
        assert all(entry.source for entry in table.values())

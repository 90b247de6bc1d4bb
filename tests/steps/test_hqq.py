"""HQQ 8/4/3/2-bit quantization: the format registry predicts the bytes HQQ really stores, every bit
width runs on CPU, and fewer bits lose more fidelity."""

from __future__ import annotations

import pytest
import torch

from executors.steps import StepContext, apply_step
from executors.steps.storage import state_dict_bytes
from planner.errors import UnknownFormatError, UnsupportedError
from planner.formats import get_format
from planner.formats.storage import linear_bytes, packing_problem
from planner.strategy import HQQ_FORMATS, QuantizationSpec

pytestmark = pytest.mark.exec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def test_every_strategy_hqq_name_resolves_in_the_registry():
    for name in HQQ_FORMATS:
        fmt = get_format(name)
        assert fmt.name == name and fmt.family == "hqq"
    assert get_format("hqq-int4-g32").group_size == 32
    assert get_format("HQQ_int3_g128").group_size == 128
    assert get_format("hqq-int4").group_size == 64
    with pytest.raises(UnknownFormatError, match="hqq-int4-g128"):
        get_format("hqq-int4-g48")  # not a listed variant; the message names close matches


@pytest.mark.parametrize("name", ["hqq-int8", "hqq-int4", "hqq-int3", "hqq-int2", "hqq-int3-g32", "hqq-int2-g32", "hqq-int4-g128"])
@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_predicted_bytes_equal_the_hqq_state_dict(name, compute):
    """One layer: the registry's formula against what HQQLinear.state_dict really holds. 96 x 200 at
    group 64 has 300 groups (3-bit pads them to 310); at group 32, 600; at 128, 150."""
    from executors.steps.hqq import hqq_linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(200, 96)
    module, detail = hqq_linear(linear, name, DTYPES[compute], "cpu")
    bias = 96 * torch.finfo(DTYPES[compute]).bits // 8
    assert state_dict_bytes(module) == linear_bytes(get_format(name), 96, 200, compute) + bias
    assert detail["nbits"] == get_format(name).bits and detail["group_size"] == get_format(name).group_size
    out = module(torch.randn(3, 200, dtype=DTYPES[compute]))
    assert out.shape == (3, 96) and torch.isfinite(out).all()


def test_a_layer_hqq_cannot_pack_is_refused_before_any_work():
    # 3 x 64 = 192 values = 3 groups of 64: 4-bit packs groups in pairs, 3-bit pads, 8-bit is per value
    assert "not a multiple of 2" in packing_problem(get_format("hqq-int4"), 3, 64)
    assert packing_problem(get_format("hqq-int3"), 3, 64) is None
    assert packing_problem(get_format("hqq-int8"), 3, 64) is None
    assert "not a multiple of the group size" in packing_problem(get_format("hqq-int8"), 3, 20)
    from executors.steps.hqq import check_hqq_sites

    layer = torch.nn.Linear(64, 3)
    with pytest.raises(UnsupportedError, match="odd.0 .hqq-int4.: its 3 groups"):
        check_hqq_sites([("odd.0", layer, "hqq-int4"), ("fine", layer, "hqq-int3")])


def test_hqq_on_minilm_bytes_match_the_prediction_and_bits_order_fidelity(minilm_path, _minilm, fidelity):
    import copy

    from planner import get_model
    from planner.memory.cpu import weights_under

    spec = get_model(minilm_path)
    scores = {}
    for name in ("hqq-int8", "hqq-int4", "hqq-int2"):
        quantization = QuantizationSpec(weights=name, compute_dtype="fp32")
        model, report = apply_step(copy.deepcopy(_minilm), quantization, StepContext())
        assert sum(1 for c in report.modules if c.action == name) == 36  # 6 layers x (q, k, v, o, up, down)
        assert state_dict_bytes(model) == weights_under(spec, quantization)[0]
        scores[name] = fidelity(model)
    assert scores["hqq-int8"] > 0.999
    assert scores["hqq-int8"] > scores["hqq-int4"] > 0.9 > scores["hqq-int2"]

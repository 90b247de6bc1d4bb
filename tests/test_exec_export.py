"""``executors.export`` / ``fitplan export``: a run's compressed model written so that ``from_pretrained`` reloads
it with the same outputs (fp32 pruned, int8 and nf4 at load time, nf4 after pruning by module replacement),
with its quantization config and a model card; formats a reload cannot reproduce are refused, nothing left."""

from __future__ import annotations

import json

import pytest

from tests.test_exec_profile import build_tiny_llama

pytestmark = pytest.mark.exec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FITPLAN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _evaluator():
    from executors.evaluate import PerplexityEvaluator

    return PerplexityEvaluator(seq_len=32, max_tokens=256)


def _run(tiny, strategy, out):
    from executors import execute

    result = execute(tiny, strategy, evaluator=_evaluator(), isolate=False, out_dir=out, speed=False)
    assert result.ok, result.reason
    return result


def _strategies():
    from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec

    return {
        "pruned-fp32": CompressionStrategy(sparsity=SparsitySpec(level=0.5)),
        "int8": CompressionStrategy(quantization=QuantizationSpec(weights="int8", compute_dtype="fp32")),
        "nf4": CompressionStrategy(quantization=QuantizationSpec(weights="nf4", compute_dtype="fp32")),
        "pruned-nf4": CompressionStrategy(sparsity=SparsitySpec(level=0.5),
                                          quantization=QuantizationSpec(weights="nf4", compute_dtype="fp32")),
    }


@pytest.mark.parametrize("name", ["pruned-fp32", "int8", "nf4", "pruned-nf4"])
def test_export_reloads_with_the_measured_quality(tiny, cache, tmp_path, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from executors.export import export_model

    result = _run(tiny, _strategies()[name], tmp_path / "runs")
    outcome = export_model(tmp_path / "runs", tmp_path / "export")
    assert outcome.verified and outcome.max_abs_diff <= 1e-4 * max(outcome.output_scale, 1.0)
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    quant = config.get("quantization_config")
    if name == "pruned-fp32":
        assert quant is None and outcome.quantization is None
    else:
        expected = "int8" if name == "int8" else "nf4"
        assert outcome.quantization == expected and quant["quant_method"] == "bitsandbytes"
        assert quant["load_in_8bit"] is (expected == "int8") and quant["load_in_4bit"] is (expected == "nf4")
    # reloaded independently, the model scores what the run measured
    kwargs = {"device_map": {"": "cpu"}} if quant else {}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export", **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    if name.startswith("pruned"):
        linear = model.model.layers[0].mlp.down_proj
        if quant is None:
            assert float((linear.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert _evaluator().evaluate(model, tokenizer, None).value == pytest.approx(result.quality.compressed, rel=1e-4)
    card = (tmp_path / "export" / "README.md").read_text()
    assert result.strategy_summary in card and f"{result.quality.retained_pct:.2f}% retained" in card
    assert "from_pretrained" in card and "Round trip" in card


def test_run_save_writes_a_reloadable_quantized_model(tiny, cache, tmp_path):
    from executors import execute
    from transformers import AutoModelForCausalLM

    result = execute(tiny, _strategies()["pruned-nf4"], evaluator=_evaluator(), isolate=False, out_dir=tmp_path,
                     speed=False, save=True)
    assert result.ok and result.saved_to, result.notes
    config = json.loads((tmp_path / result.saved_to / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    model = AutoModelForCausalLM.from_pretrained(result.saved_to, device_map={"": "cpu"})
    assert sum(type(m).__name__ == "Linear4bit" for m in model.modules()) == 2 * 7  # 7 Linears per block


def test_refused_formats_and_mistakes(tiny, cache, tmp_path, capsys):
    from planner.cli import main
    from planner.errors import UnsupportedError
    from planner.strategy import CompressionStrategy, QuantizationSpec

    from executors.export import export_model

    _run(tiny, CompressionStrategy(quantization=QuantizationSpec(weights="hqq-int4", compute_dtype="fp32")),
         tmp_path / "hqq")
    with pytest.raises(UnsupportedError, match="HQQ"):
        export_model(tmp_path / "hqq", tmp_path / "hqq-export")
    assert not (tmp_path / "hqq-export").exists()
    assert main(["export", str(tmp_path / "hqq"), "--out", str(tmp_path / "x")]) == 2
    assert "HQQ" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a result")
    assert main(["export", str(tmp_path / "notes.txt")]) == 2
    assert "is a file but not a run's result.json" in capsys.readouterr().err
    _run(tiny, _strategies()["pruned-fp32"], tmp_path / "hqq")  # two candidates in one directory: ambiguous
    assert main(["export", str(tmp_path / "hqq")]) == 2
    assert "2 runs" in capsys.readouterr().err

"""``fitplan run`` on families beyond the Llama fixture: GPT-2 (Conv1D blocks) and a model_type the planner
cannot describe (GPT-J); structural requests a model cannot take are refused before any work."""

from __future__ import annotations

import pytest

from planner.errors import InvalidRequestError, UnsupportedError
from planner.strategy import CompressionStrategy, SparsitySpec

pytestmark = pytest.mark.exec

_DIRS = {}


def _model_dir(tmp_path_factory, kind: str):
    """A tiny random GPT-2 or CodeGen (a family the planner cannot describe) with the test fixture's tokenizer,
    saved like a hub download."""
    if kind not in _DIRS:
        import torch
        import transformers

        from tests.exec_helpers import tiny_llm_dir

        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llm_dir().path)
        common = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=len(tokenizer), n_positions=128, bos_token_id=0,
                      eos_token_id=0)
        config = (transformers.GPT2Config(**common) if kind == "gpt2"
                  else transformers.CodeGenConfig(rotary_dim=8, n_ctx=common["n_positions"], **common))
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(kind)
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        _DIRS[kind] = path
    return _DIRS[kind]


def test_cli_run_gpt2_sparsity_half_zeros_half_of_the_block_weights(tmp_path_factory, tmp_path, capsys):
    import json

    from planner.cli import main

    model = _model_dir(tmp_path_factory, "gpt2")
    code = main(["run", str(model), "--sparsity", "0.5", "--in-process", "--no-speed", "--out", str(tmp_path),
                 "--json"])
    assert code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok"
    step = result["steps"][0]
    # 2 blocks x (c_attn 64x192 + c_proj 64x64 + c_fc 64x256 + c_proj 256x64) Conv1D weights, half of them zeroed
    targeted = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)
    assert step["metrics"]["sparsity_achieved"] == 0.5
    assert step["zeros_after"] - step["zeros_before"] == targeted // 2
    assert len(step["modules"]) == 8 and f"of the {targeted:,} weights of 8 block linears zero" in step["summary"]
    assert result["params"] == result["prediction"]["params"]


def test_unknown_model_type_runs_and_is_measured_without_predictions(tmp_path_factory, tmp_path):
    from executors import execute

    model = _model_dir(tmp_path_factory, "codegen")
    result = execute(model, CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="2:4")), isolate=False,
                     out_dir=tmp_path, device="cpu", speed=False)
    assert result.status == "ok", result.reason
    assert result.steps[0]["metrics"]["sparsity_achieved"] == 0.5 and len(result.steps[0]["modules"]) == 8  # 4 per block
    assert result.prediction is None and any("model_type 'codegen'" in n for n in result.notes)


@pytest.mark.parametrize(("kind", "sparsity", "error", "match"), [
    ("codegen", SparsitySpec(level=0.5, pattern="ffn"), UnsupportedError, "needs the planner's description"),
    ("gpt2", SparsitySpec(level=0.5, pattern="heads"), UnsupportedError, "hidden_size / num_attention_heads"),
    ("gpt2", SparsitySpec(level=0.1, pattern="layers"), InvalidRequestError, "would change nothing"),
])
def test_structural_requests_a_model_cannot_take_are_refused_before_any_work(tmp_path_factory, tmp_path, kind,
                                                                            sparsity, error, match):
    from executors import execute

    with pytest.raises(error, match=match):
        execute(_model_dir(tmp_path_factory, kind), CompressionStrategy(sparsity=sparsity), isolate=False,
                out_dir=tmp_path, device="cpu", speed=False)
    assert not any(tmp_path.iterdir())  # nothing was written: no run directory, no results.jsonl


def test_a_kv_cache_format_is_refused_before_any_work_not_skipped(tmp_path_factory, tmp_path):
    """The executors cannot apply (or measure) a KV-cache dtype: a run must not report it as done."""
    from executors import execute
    from planner.strategy import QuantizationSpec

    strategy = CompressionStrategy(quantization=QuantizationSpec(weights="int8", kv_cache="fp8"))
    with pytest.raises(UnsupportedError, match="kv_cache 'fp8': the executors do not quantize the KV cache"):
        execute(_model_dir(tmp_path_factory, "gpt2"), strategy, isolate=False, out_dir=tmp_path, device="cpu",
                speed=False)
    assert not any(tmp_path.iterdir())  # refused before any work

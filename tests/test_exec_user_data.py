"""``execute(..., data=...)`` / ``fitplan run --eval-data`` end to end: the user's sentences score an HQQ
run on MiniLM (measured bytes = predicted), and too-short perplexity text is refused before any work."""

from __future__ import annotations

import json

import pytest

from planner.errors import InvalidRequestError

pytestmark = pytest.mark.exec

SENTENCES = ["The striker scored twice in the second half.", "Knead the dough until it is smooth.",
             "The central bank raised interest rates.", "Roast the vegetables in a hot oven.",
             "Our team won the basketball final.", "Stock prices fell after the earnings report."]


def test_hqq_int3_on_the_users_sentences(tmp_path):
    from executors import execute
    from executors.fixtures import minilm_dir
    from planner.strategy import CompressionStrategy, QuantizationSpec

    data = tmp_path / "mine.txt"
    data.write_text("\n".join(SENTENCES) + "\n")
    strategy = CompressionStrategy(quantization=QuantizationSpec(weights="hqq-int3", compute_dtype="fp32"))
    result = execute(minilm_dir(), strategy, evaluator="fidelity", data=data, isolate=False, out_dir=tmp_path / "out",
                     device="cpu", speed=False)
    assert result.ok, result.reason
    assert result.quality.extras["sentences"] == len(SENTENCES)  # the user's, not the 60 shipped ones
    assert 0.5 < result.quality.compressed < 0.99
    assert result.weight_bytes == result.prediction.weight_bytes  # HQQ storage predicted to the byte
    assert result.params == result.params_baseline


def test_too_short_perplexity_text_is_refused_up_front(tmp_path):
    from executors.evaluate import check_evaluation_data, get_evaluator
    from tests.exec_helpers import tiny_llm_dir

    model_dir = tiny_llm_dir().path
    short = tmp_path / "short.txt"
    short.write_text("A few words only.\n")
    with pytest.raises(InvalidRequestError, match="needs at least one window of 128 tokens"):
        check_evaluation_data(get_evaluator("perplexity", "causal-lm", data=short), model_dir)
    enough = tmp_path / "long.jsonl"
    enough.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}"}) + "\n" for i in range(60)))
    evaluator = get_evaluator("perplexity", "causal-lm", data=enough)
    check_evaluation_data(evaluator, model_dir)
    assert len(evaluator.documents()) == 60

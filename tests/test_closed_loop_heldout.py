"""The closed-loop benchmark's fixed held-out set (benchmarks/closed_loop.py): what a strategy executes,
the stratified seeded draw, the saved set's reuse rules and the measurement cache. No model is run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from planner.strategy import BlockFormat, BlockSparsity, CompressionStrategy, QuantizationSpec, SparsitySpec


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "closed_loop.py"
    spec = importlib.util.spec_from_file_location("closed_loop_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _quant(weights="nf4", blocks=(), keep=0, **parts):
    return CompressionStrategy(quantization=QuantizationSpec(
        weights=weights, keep_first_layers=keep, keep_last_layers=keep, block_formats=tuple(
            BlockFormat(block=b, group=g, format=f) for b, g, f in blocks)), **parts)


def test_executed_form_follows_what_the_executors_apply(bench):
    a = _quant("hqq-int2", [(0, "mlp", "int8"), (1, "attention", "hqq-int4")])
    b = _quant("hqq-int2", [(2, "mlp", "hqq-int8")])
    forms = {bench.executed_form(s, 4) for s in (a, b, _quant("hqq-int2"))}
    assert len(forms) == 3  # per-block formats are applied: three different models
    # an override equal to the main format runs the same model as none
    assert bench.executed_form(_quant("hqq-int2", [(2, "mlp", "hqq-int2")]), 4) == bench.executed_form(
        _quant("hqq-int2"), 4)
    # keeping the first/last block at bf16 with bf16 weights changes nothing; at nf4 it does
    assert bench.executed_form(_quant("bf16", keep=1), 4) == bench.executed_form(_quant("bf16"), 4)
    assert bench.executed_form(_quant("nf4", keep=1), 4) != bench.executed_form(_quant("nf4"), 4)
    # sparsity: block levels are not applied, the level and pattern are
    sparse = SparsitySpec(level=0.25, pattern="unstructured", method="wanda")
    with_levels = sparse.model_copy(update={"block_levels": (BlockSparsity(block=0, group="mlp", level=0.5),)})
    assert (bench.executed_form(_quant(sparsity=sparse), 4) == bench.executed_form(_quant(sparsity=with_levels), 4))
    assert bench.executed_form(_quant(sparsity=sparse), 4) != bench.executed_form(
        _quant(sparsity=sparse.model_copy(update={"level": 0.5})), 4)
    # no quantization (fp32 load) is not a bf16 cast
    assert bench.executed_form(CompressionStrategy(sparsity=sparse), 4) != bench.executed_form(
        _quant("bf16", sparsity=sparse), 4)


def test_executed_form_agrees_with_the_executors_quantization_plan(bench):
    """The executors' own per-Linear plan (executors/steps/quantize.py) gives one format per block and group
    that matches executed_form (per-block overrides, kept blocks and group formats alike)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from executors.steps._recorder import Recorder
    from executors.steps.layout import ModelLayout
    from executors.steps.quantize import _plan

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    for strategy in (_quant("hqq-int2", [(0, "mlp", "int8"), (3, "attention", "hqq-int4")]),
                     _quant("nf4", keep=1), _quant("int8")):
        spec = strategy.quantization
        plan = _plan(ModelLayout(model), spec, Recorder("quantization", spec, model))
        per_block: dict[int, dict[str, set[str]]] = {}
        for site, fmt in plan:
            if site.layer is not None:
                group = "attention" if site.component == "attention" else "mlp"
                per_block.setdefault(site.layer, {}).setdefault(group, set()).add(fmt)
        executed = json.loads(bench.executed_form(strategy, 4))["quantization"]["blocks"]
        assert [[per_block[b]["attention"], per_block[b]["mlp"]] for b in range(4)] == [
            [{attention}, {mlp}] for attention, mlp in executed]


def _pool(bench):
    points = []
    for i, (tech, loss) in enumerate([(t, loss) for t in bench.TECHNIQUES[:4] for loss in (0.5, 3, 8, 20, 60)] * 3):
        points.append(bench.Point(key=f"k{i:03d}", executed=f"form{i:03d}", technique=tech, predicted_loss=loss))
    # an allocation that executes like a uniform point: only one of the two may be drawn
    points.append(bench.Point(key="twin-a", executed="form000", technique="mixed precision", predicted_loss=0.5))
    return points


def test_select_heldout_is_seeded_stratified_and_never_repeats_an_execution(bench):
    pool = _pool(bench)
    chosen = bench.select_heldout(pool, 16, seed=0)
    assert len(chosen) == 16
    assert len({p.executed for p in chosen}) == 16
    assert [p.key for p in chosen] == [p.key for p in bench.select_heldout(list(reversed(pool)), 16, seed=0)]
    assert [p.key for p in chosen] != [p.key for p in bench.select_heldout(pool, 16, seed=1)]
    techniques = [p.technique for p in chosen]
    assert {t: techniques.count(t) for t in set(techniques)} == {t: 4 for t in bench.TECHNIQUES[:4]}
    for tech in bench.TECHNIQUES[:4]:  # 4 picks of a technique over 5 bands: 4 different bands
        assert len({p.band for p in chosen if p.technique == tech}) == 4
    # a large request takes every distinct execution once, no more
    everything = bench.select_heldout(pool, 1000, seed=0)
    assert len(everything) == len({p.executed for p in pool}) == len(pool) - 1


def test_loss_bands(bench):
    assert [bench.loss_band(x) for x in (0.0, 1.99, 2.0, 14.9, 39.9, 40.0, 100.0, None)] == [0, 0, 1, 2, 3, 4, 4, 4]
    assert bench.band_label(0) == "0-2" and bench.band_label(4) == ">=40"


def test_candidates_the_loop_trained_on_are_left_out_of_later_predictors(bench):
    points = [bench.Point(key=k, executed=f"f{k}", technique="quantization", predicted_loss=1.0) for k in "abc"]
    rounds = {"fa": 1, "fb": 2}  # the loop measured a's model in round 1, b's in round 2
    assert bench.excluded_for(points, rounds, 1) == set()
    assert bench.excluded_for(points, rounds, 2) == {"a"}
    assert bench.excluded_for(points, rounds, 3) == {"a", "b"}


def test_saved_set_is_reused_until_model_or_space_change(bench, tmp_path):
    saved = {"model_fingerprint": "m1", "space_fingerprint": "s1", "seed": 0, "size": 16, "created": "2026-12-06"}
    decide = bench.reuse_decision
    assert decide(saved, model_fp="m1", space_fp="s1", seed=0, size=16, regenerate=False)[0] is False
    draw, why = decide(saved, model_fp="m2", space_fp="s1", seed=0, size=16, regenerate=False)
    assert draw and "model changed" in why and "m1" in why and "m2" in why
    assert decide(saved, model_fp="m1", space_fp="s2", seed=0, size=16, regenerate=False)[0] is True
    assert decide(saved, model_fp="m1", space_fp="s1", seed=0, size=16, regenerate=True)[0] is True
    assert decide(None, model_fp="m1", space_fp="s1", seed=0, size=16, regenerate=False)[0] is True
    with pytest.raises(bench.BenchmarkError, match="--heldout-seed 0 --held-out 16"):
        decide(saved, model_fp="m1", space_fp="s1", seed=3, size=16, regenerate=False)
    # a replaced file is kept beside the new one
    path = tmp_path / "tiny.json"
    bench.write_heldout(path, {**saved, "version": 1}, None)
    kept = bench.write_heldout(path, {**saved, "model_fingerprint": "m2"}, {**saved, "version": 1})
    assert json.loads(path.read_text())["model_fingerprint"] == "m2"
    assert kept is not None and json.loads(kept.read_text())["model_fingerprint"] == "m1"


def test_measurement_cache_never_mixes_models_strategies_or_evaluators(bench, tmp_path):
    from search.execution import Measurement

    m = Measurement(key="K", status="ok", quality_retained_pct=97.5, memory_gib=0.4, latency_ms=12.0, worker="w",
                    seconds=3.0)
    cache = bench.MeasurementCache(tmp_path, model_fp="m1", evaluator_key="fidelity-1", device="cpu")
    assert cache.get("K") is None
    cache.put("K", m)
    assert cache.get("K").quality_retained_pct == 97.5
    assert cache.get("other") is None
    assert bench.MeasurementCache(tmp_path, model_fp="m2", evaluator_key="fidelity-1", device="cpu").get("K") is None
    assert bench.MeasurementCache(tmp_path, model_fp="m1", evaluator_key="fidelity-2", device="cpu").get("K") is None
    # a file moved under another model's directory is not read either
    other = bench.MeasurementCache(tmp_path, model_fp="m3", evaluator_key="fidelity-1", device="cpu")
    target = other._file("K")
    target.parent.mkdir(parents=True)
    target.write_text(cache._file("K").read_text())
    assert other.get("K") is None


def test_held_out_jobs_are_queued_per_executors_code(bench, tmp_path, monkeypatch):
    """The execution queue hands back a job's stored outcome: the queue is per executors code, so other code's
    measurements are executed again rather than read from the queue."""
    import search.loop
    from search.execution import Measurement

    queues = []

    def execute(storage, study, jobs, request, progress):  # noqa: ARG001
        queues.append(study)
        return [Measurement(key=j["key"], status="ok", quality_retained_pct=90.0, worker="w", seconds=1.0)
                for j in jobs]

    class Request:
        def model_copy(self, update):
            return self

    monkeypatch.setattr(search.loop, "execute", execute)
    cache = bench.MeasurementCache(tmp_path, model_fp="m1", evaluator_key="e", device="cpu")
    bench.measure_heldout([{"key": "K", "summary": "k"}], cache, Request())
    monkeypatch.setitem(cache.identity, "executors_code", "other-code")
    bench.measure_heldout([{"key": "K2", "summary": "k2"}], cache, Request())
    assert queues[0] != queues[1] and queues[1].endswith("other-code")


def test_content_fingerprint_follows_the_weights_not_the_path(bench, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"model_type": "llama"}')
        (tmp_path / name / "model.safetensors").write_bytes(b"weights")
    assert bench.content_fingerprint(tmp_path / "a") == bench.content_fingerprint(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"other weights")
    assert bench.content_fingerprint(tmp_path / "a") != bench.content_fingerprint(tmp_path / "b")


def test_executed_form_of_layer_pruning_lists_the_kept_blocks_by_their_original_number(bench):
    """Half of 4 blocks pruned: the executor keeps the two most influential (1 and 2 here), evenly spaced
    ones (0 and 3) without influence; an override of a removed block runs the same model as none."""
    layers = SparsitySpec(level=0.5, pattern="layers")
    influence = [0.1, 0.9, 0.8, 0.2]

    def blocks(strategy, given=None):
        return json.loads(bench.executed_form(strategy, 4, given))["quantization"]["blocks"]

    assert blocks(_quant("nf4", [(2, "mlp", "int8")], sparsity=layers), influence) == [["nf4", "nf4"],
                                                                                        ["nf4", "int8"]]
    assert blocks(_quant("nf4", [(2, "mlp", "int8")], sparsity=layers)) == [["nf4", "nf4"], ["nf4", "nf4"]]
    assert blocks(_quant("nf4", [(3, "mlp", "int8")], sparsity=layers)) == [["nf4", "nf4"], ["nf4", "int8"]]
    assert bench.executed_form(_quant("nf4", [(0, "mlp", "int8")], sparsity=layers), 4, influence) == \
        bench.executed_form(_quant("nf4", sparsity=layers), 4, influence)

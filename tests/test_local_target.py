"""Deployment target ``local``: plans and searches of a local model directory predict exactly what the
executors' own prediction (executors/predict.py) puts next to a measured run on this machine, propose
only strategies the executors run, and never fail a trial for GPU-parallelism reasons."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hardware_db.probe import HostProbe
from planner.errors import FitplanError, InvalidRequestError
from planner.strategy import CompressionStrategy, DistillationSpec, QuantizationSpec, SparsitySpec

# A fixed host (the probe is monkeypatched): figures must not depend on the machine running the tests.
PROBE = HostProbe(cpu_name="Test CPU 7000", vendor="AMD", logical_cores=2, ram_bytes=24 * 2**30,
                  available_bytes=20 * 2**30, bandwidth_gbps=25.0, matmul_gflops={"fp32": 200.0, "bf16": 400.0},
                  matmul_backend="torch, 2 threads", cpu_flags=("avx512_bf16",))
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 2048, "hidden_size": 256,
              "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 704,
              "max_position_embeddings": 256, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
              "hidden_act": "silu", "torch_dtype": "float32"}


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch, tmp_path):
    """This machine = a fixed probed CPU, no GPU (cached in a temporary FITPLAN_CACHE_DIR)."""
    import hardware_db.probe as probe
    import planner.planning.local as local

    monkeypatch.setattr(probe, "probe_host", lambda: PROBE)
    monkeypatch.setenv("FITPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(local, "_has_nvidia_driver", lambda: False)
    local.local_device.cache_clear()
    yield
    local.local_device.cache_clear()


@pytest.fixture(scope="module")
def minilm():
    import executors  # the MiniLM package is part of the test extra: a missing one is a failure

    return str(executors.minilm_dir())


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """The tiny causal LM's config (executors.fixtures.LLAMA_CONFIG): predictions read config.json only."""
    path = tmp_path_factory.mktemp("tiny-llama")
    (path / "config.json").write_text(json.dumps(TINY_LLAMA))
    return str(path)


def local(**limits):
    from planner.planning.constraints import Constraints

    return Constraints(deployment_target="local", **limits)


def executor_prediction(model_dir: str, strategy: CompressionStrategy, kind: str):
    """What executors/predict.py predicts for a measured CPU run of ``strategy`` with the default workload."""
    from executors.predict import predict
    from executors.result import ExecutionResult, LatencyMeasurement

    batch, seq = (32, 64) if kind == "encoder" else (8, 128)
    result = ExecutionResult(status="ok", model_dir=model_dir, model_kind=kind, strategy=json.loads(strategy.to_json()),
                             strategy_summary=strategy.summary(), device="cpu", isolated=True,
                             latency=LatencyMeasurement(batch_size=batch, seq_len=seq, warmup=1, repeats=3,
                                                        median_ms=1.0, min_ms=1.0, max_ms=1.0, tokens_per_s=1.0))
    return predict(result, strategy)


STRATEGIES = [
    CompressionStrategy(),
    CompressionStrategy(quantization=QuantizationSpec(weights="nf4", compute_dtype="bf16")),
    CompressionStrategy(quantization=QuantizationSpec(weights="bf16", compute_dtype="bf16")),
    CompressionStrategy(quantization=QuantizationSpec(weights="hqq-int4", compute_dtype="bf16", keep_first_layers=1,
                                                      keep_last_layers=1, keep_format="bf16")),
    CompressionStrategy(sparsity=SparsitySpec(pattern="ffn", level=0.25, method="magnitude"),
                        quantization=QuantizationSpec(weights="int8", compute_dtype="bf16")),
    CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5)),
]


@pytest.mark.parametrize("which,kind", [("minilm", "encoder"), ("tiny_llm", "causal-lm")])
def test_local_candidates_predict_what_the_executors_predict(request, which, kind):
    from planner.memory.result import GIB
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator

    model_dir = request.getfixturevalue(which)
    spec = get_model(model_dir)
    evaluator = Evaluator(spec, local(max_memory_gb=4))
    baseline = evaluator.evaluate(CompressionStrategy())
    for strategy in STRATEGIES:
        candidate = evaluator.evaluate(strategy)
        expected = executor_prediction(model_dir, strategy, kind)
        assert candidate.supported, candidate.violations
        assert candidate.memory_gib == pytest.approx(expected.peak_memory_bytes / GIB, rel=1e-9)
        assert candidate.weights_gib == pytest.approx(expected.weight_bytes / GIB, rel=1e-9)
        assert candidate.latency_ms == pytest.approx(expected.latency_ms, rel=1e-6)
        assert candidate.params == expected.params
        assert candidate.speedup == pytest.approx(baseline.latency_ms / candidate.latency_ms)
        assert candidate.gpus == 1 and candidate.usd_per_hour is None
    assert baseline.speedup == pytest.approx(1.0)


def test_the_same_functions_make_both_figures():
    """executors/predict.py calls the planner's local functions: no second copy of the formulas."""
    import inspect

    import executors.predict as predict

    source = inspect.getsource(predict)
    assert "forward_ms(" in source and "executor_workload(" in source and "gpu_run_memory(" in source
    assert "forward_latency(" not in source and "estimate_memory(" not in source


def test_minilm_plan_on_local_finds_feasible_candidates(minilm):
    import planner

    plan = planner.plan(minilm, {"max_memory_gb": 1, "max_accuracy_loss": 3, "deployment_target": "local"},
                        metric="fidelity")
    assert plan.n_feasible >= 3
    table = plan.table()
    assert table["memory_gib"].max() <= 1 and (table["loss_pct"] <= 3).all()
    assert table["latency_ms"].notna().all() and (table["latency_ms"] > 0).all()
    assert plan.baseline["format"] == "fp32" and plan.baseline["latency_ms"] > 0
    # speedup is the ratio of the timed forwards
    for row in table.itertuples():
        assert row.speedup == pytest.approx(plan.baseline["latency_ms"] / row.latency_ms)
    assert "local" in plan.constraints.summary() and "predicted for the executors' run" in " ".join(
        plan.recommended.notes)


def test_plan_cli_on_local(minilm, capsys):
    from planner.cli import main

    code = main(["plan", minilm, "--max-memory-gb", "1", "--max-accuracy-loss", "3", "--deployment-target", "local"])
    out = capsys.readouterr().out
    assert code == 0 and "Recommended:" in out and "GiB peak, forward" in out


@pytest.mark.parametrize("which,metric", [("minilm", "fidelity"), ("tiny_llm", "perplexity")])
def test_local_search_has_feasible_trials_and_none_fails(request, which, metric):
    from search import run_search

    model_dir = request.getfixturevalue(which)
    result = run_search(model_dir, local(max_memory_gb=1, max_accuracy_loss=3), n_trials=60, seed=0, metric=metric)
    assert result.n_complete == 60 and result.n_failed == 0
    table = result.table
    feasible = table[table["feasible"]]
    assert len(feasible) >= 1 and feasible["latency_ms"].notna().all()
    assert result.objectives == ("quality_loss", "memory_gib", "latency_ms")
    assert result.request["metric"] == metric
    kind = "encoder" if which == "minilm" else "causal-lm"
    row = feasible.iloc[0]
    strategy = CompressionStrategy.from_json(row["strategy_json"])
    expected = executor_prediction(model_dir, strategy, kind)
    assert row["latency_ms"] == pytest.approx(expected.latency_ms, rel=1e-6)
    assert row["memory_gib"] == pytest.approx(expected.peak_memory_bytes / 2**30, rel=1e-9)


def test_search_cli_on_local_fails_no_trial(minilm, tmp_path, capsys):
    import optuna

    from planner.cli import main

    db = f"sqlite:///{tmp_path / 's.db'}"
    code = main(["search", minilm, "--max-memory-gb", "1", "--max-accuracy-loss", "3", "--trials", "20",
                 "--deployment-target", "local", "--storage", db, "--study", "s", "--out", str(tmp_path / "out"),
                 "--no-progress", "--seed", "1"])
    assert code == 0
    study = optuna.load_study(study_name="s", storage=db)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) and len(study.trials) == 20
    assert "latency_ms" in (tmp_path / "out" / "table.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("target", [None, "cpu"])
def test_a_small_model_on_a_gpu_target_never_fails_for_parallelism(minilm, target):
    """MiniLM does not fit 1 GiB with vLLM on an L4: a violation, not '8 pipeline stages exceed 6 layers'."""
    from planner.planning.constraints import Constraints
    from search import run_search

    limits = {"max_memory_gb": 1, "max_accuracy_loss": 3}
    if target:
        limits["deployment_target"] = target
    result = run_search(minilm, Constraints(**limits), n_trials=30, seed=0)
    assert result.n_complete == 30 and result.n_failed == 0
    reasons = " ".join(result.table["why_not"])
    assert "pipeline stages" not in reasons and "tensor parallel" not in reasons
    assert "needs" in reasons  # the memory violation is reported as such


def test_context_is_clipped_to_the_model_positions(minilm):
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator
    from planner.planning.constraints import Constraints

    evaluator = Evaluator(get_model(minilm), Constraints(max_memory_gb=8, gpu="RTX 4090", context=4096))
    assert evaluator.constraints.resolved_context == 512
    assert "clipped from 4,096 to the model's 512 positions" in " ".join(
        evaluator.evaluate(CompressionStrategy()).notes)


# -- constraints ---------------------------------------------------------------------------------

def test_local_constraints_accept_speed_limits_and_default_the_budget_to_the_device():
    constraints = local(min_speedup=1.5)
    assert constraints.memory_limit_gib() == pytest.approx(20.0, abs=0.5)  # the probed host's available memory
    assert constraints.memory_limit_source() == "local device usable memory"
    assert local(max_memory_gb=1).memory_limit_gib() == 1


@pytest.mark.parametrize("extra,flag", [({"batch": 4}, "batch"), ({"context": 128}, "context"),
                                         ({"gpu": "RTX 4090"}, "gpu"), ({"max_cost_per_hour": 1.0}, "max_cost"),
                                         ({"gpus": 2}, "gpus")])
def test_local_constraints_refuse_what_does_not_apply(extra, flag):
    with pytest.raises(ValueError, match=f"{flag}.*not apply"):
        local(max_memory_gb=1, **extra)


def test_local_cli_refuses_batch_with_one_line(minilm, capsys):
    from planner.cli import main

    code = main(["plan", minilm, "--max-memory-gb", "1", "--deployment-target", "local", "--batch", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "batch does not apply" in err and "Traceback" not in err


# -- metric plumbing ---------------------------------------------------------------------------

def test_evaluator_passes_the_metric_to_predict_quality(minilm):
    from planner.accuracy import predict_quality
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator, evaluate_candidate
    from search.candidates import candidate_evaluator

    spec = get_model(minilm)
    strategy = CompressionStrategy(quantization=QuantizationSpec(weights="nf4", compute_dtype="bf16"))
    constraints = local(max_memory_gb=1)
    by_metric = {}
    for metric, family in (("fidelity", "embedding"), ("perplexity", "perplexity"), ("accuracy", "accuracy")):
        candidate = Evaluator(spec, constraints, metric=metric).evaluate(strategy)
        expected = predict_quality(spec, strategy, metric=family)
        assert candidate.quality.retained_pct == pytest.approx(expected.retained_pct)
        assert candidate.quality.metric == family
        assert evaluate_candidate(spec, strategy, constraints, metric=metric).loss_pct == pytest.approx(
            expected.loss_pct)
        row = candidate_evaluator(spec, constraints, (), metric=metric)(strategy)
        assert row["quality_retained_pct"] == pytest.approx(expected.retained_pct)
        by_metric[metric] = candidate.loss_pct
    assert len({round(v, 6) for v in by_metric.values()}) > 1  # the metric changes the prediction
    assert Evaluator(spec, constraints).metric == "accuracy"
    with pytest.raises(InvalidRequestError, match="unknown metric family"):
        Evaluator(spec, constraints, metric="bleu-ish")


def test_plan_passes_the_metric(minilm):
    import planner

    limits = {"max_memory_gb": 1, "deployment_target": "local", "max_accuracy_loss": 50}
    perplexity = planner.plan(minilm, limits, metric="perplexity").table("all")
    accuracy = planner.plan(minilm, limits).table("all")
    merged = perplexity.merge(accuracy, on="strategy", suffixes=("_p", "_a"))
    assert (merged["loss_pct_p"] != merged["loss_pct_a"]).any()


# -- the executable space ------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["minilm", "tiny_llm"])
def test_executable_space_holds_only_what_the_executors_run(request, which):
    from executors.preflight import check_strategy
    from planner.execution import UNSUPPORTED_FORMATS, executor_formats
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator
    from search.space import executable_space

    model_dir = request.getfixturevalue(which)
    spec = get_model(model_dir)
    constraints = local(max_memory_gb=1)
    space = executable_space(spec, constraints)
    formats = set(space.weight_formats) - {"none"}
    assert formats <= set(executor_formats("cpu")) and not formats & set(UNSUPPORTED_FORMATS)
    assert {"int8", "nf4", "hqq-int4", "bf16"} <= formats and "dynamic-int8" not in formats
    assert space.kv_dtypes == ("auto",) and space.compute_dtype == "bf16"
    evaluator = Evaluator(spec, constraints)
    structural = {}
    for point in space.points():
        strategy = space.strategy(**point)
        key = (point["sparsity"], point["sparsity_level"], point["distill_depth"], point["distill_width"])
        if key not in structural:
            check_strategy(model_dir, strategy)  # the executors' preflight accepts every point
            structural[key] = True
        if point["weights"] in ("none", "nf4", "hqq-int4") and point["keep_layers"] == 0:
            candidate = evaluator.evaluate(strategy)
            assert candidate.supported and candidate.memory_gib is not None and candidate.latency_ms is not None
    assert len(structural) > 10
    if which == "tiny_llm":
        assert "heads" in space.sparsity and space.levels_for("heads") == (0.5,)  # 2 KV groups: half or none
    else:
        assert "heads" not in space.sparsity  # BERT's config cannot describe fewer heads


def test_default_space_of_a_local_target_is_the_executable_space(minilm):
    from planner.models.resolve import get_model
    from search.space import default_space, executable_space

    spec = get_model(minilm)
    assert default_space(spec, local(max_memory_gb=1)) == executable_space(spec, local(max_memory_gb=1))


def test_refused_combinations_are_dropped_from_any_default_space(minilm):
    """12.5% of the layers of a 3-layer student removes none: the executors refuse it, so no space has it."""
    from planner.models.derive import derive_spec
    from planner.models.resolve import get_model
    from planner.planning.constraints import Constraints
    from search.space import default_space

    spec = get_model(minilm)
    space = default_space(spec, Constraints(max_memory_gb=1))
    assert 0.125 not in space.levels_for("layers") and 0.125 in space.levels_for("ffn")
    for point in space.points():
        if point["weights"] == "none":
            derive_spec(spec, space.strategy(**point))


def test_levels_by_pattern_is_validated_and_left_out_of_old_records():
    from search.space import SearchSpace

    assert "levels_by_pattern" not in SearchSpace().record()
    space = SearchSpace(sparsity=("none", "heads"), levels_by_pattern={"heads": (0.5,)})
    assert space.levels_for("heads") == (0.5,) and space.size == 2 * 3
    with pytest.raises(ValueError, match="takes a level"):
        SearchSpace(levels_by_pattern={"2:4": (0.5,)})
    with pytest.raises(ValueError):
        SearchSpace(levels_by_pattern={"heads": (1.5,)})


def test_the_executable_space_does_not_import_torch(minilm, tmp_path):
    code = ("import sys; from planner.planning.constraints import Constraints; from search.space import "
            "executable_space; from planner import get_model; "
            f"executable_space(get_model({minilm!r}), Constraints(deployment_target='local', max_memory_gb=1)); "
            "print('torch' in sys.modules)")
    env = {**__import__("os").environ, "FITPLAN_CACHE_DIR": str(tmp_path)}
    (tmp_path / "host.toml").write_text(__import__("hardware_db.probe", fromlist=["x"]).entry_toml(
        __import__("hardware_db.probe", fromlist=["x"]).host_entry(PROBE)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "False"


def test_low_rank_on_local_is_unknown_not_an_error(minilm):
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator
    from planner.strategy import LowRankSpec

    candidate = Evaluator(get_model(minilm), local(max_memory_gb=1)).evaluate(
        CompressionStrategy(low_rank=LowRankSpec(rank_ratio=0.5)))
    assert candidate.memory_gib is None and not candidate.feasible
    assert any("low-rank" in note for note in candidate.notes)


def test_unknown_local_device_is_a_clear_error():
    from planner.planning.local import local_device

    with pytest.raises(FitplanError, match="allowed: auto, cpu, cuda"):
        local_device("tpu")
    with pytest.raises(FitplanError, match="no NVIDIA GPU"):
        local_device("cuda")


def test_local_on_a_cuda_machine_predicts_the_executors_cuda_peak(minilm, monkeypatch):
    """With an NVIDIA GPU, 'local' is CUDA GPU 0 (its catalog entry): memory = the peak allocated that
    executors/predict.py predicts for a CUDA run on that GPU; latency = the timed forward on it."""
    import hardware_db.probe as probe
    import planner.planning.local as local_module
    from executors.predict import predict
    from executors.result import Environment, ExecutionResult
    from planner.memory.result import GIB
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator
    from search.space import executable_space

    monkeypatch.setattr(local_module, "_has_nvidia_driver", lambda: True)
    monkeypatch.setattr(probe, "nvidia_gpus", lambda: ["NVIDIA GeForce RTX 4090"])
    local_module.local_device.cache_clear()
    device = local_module.local_device()
    assert device.kind == "cuda" and device.accelerator.name == "NVIDIA GeForce RTX 4090"
    spec = get_model(minilm)
    evaluator = Evaluator(spec, local(max_memory_gb=2))
    environment = Environment(device="cuda", device_name="NVIDIA GeForce RTX 4090", python="3.11", platform="linux",
                              cpu_model="x", cpu_count=2, torch_threads=2, versions={})
    for strategy in STRATEGIES[:3]:
        candidate = evaluator.evaluate(strategy)
        result = ExecutionResult(status="ok", model_dir=minilm, model_kind="encoder",
                                 strategy=json.loads(strategy.to_json()), strategy_summary=strategy.summary(),
                                 device="cuda", isolated=True, environment=environment)
        expected = predict(result, strategy)
        assert candidate.memory_gib == pytest.approx(expected.peak_memory_bytes / GIB, rel=1e-9)
        assert candidate.latency_ms is not None and candidate.latency_ms > 0
    assert "dynamic-int8" not in executable_space(spec, local(max_memory_gb=2)).weight_formats
    assert Evaluator(spec, local(max_memory_gb=2), device="cpu").device.kind == "cpu"  # as executors(device="cpu")
    assert executable_space(spec, local(max_memory_gb=2), "cpu").weight_formats == executable_space(
        spec, local(max_memory_gb=2)).weight_formats  # dynamic-int8 is CPU-only but needs fp32 matmuls anyway
    monkeypatch.setattr(probe, "nvidia_gpus", lambda: ["Mystery Accelerator 1"])
    local_module.local_device.cache_clear()
    with pytest.raises(FitplanError, match="not in the hardware catalog"):
        local_module.local_device()

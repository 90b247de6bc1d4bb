"""search: the space, a run's trials and table, resumption, refusals, failures and plots (no torch)."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from planner.errors import FitplanError, InvalidRequestError
from planner.planning.constraints import Constraints
from planner.strategy import CompressionStrategy
from search import run_search
from search.objective import trial_record
from search.results import non_dominated_layers
from search.space import SearchSpace, default_space
from search.storage import StorageError, open_storage
from search.study import StudyMismatchError

LLAMA = "meta-llama/Llama-3.1-8B"
CONSTRAINTS = Constraints(max_memory_gb=16, max_accuracy_loss=5, gpu="RTX 4090")
SMALL = SearchSpace(weight_formats=("none", "int8", "nf4", "awq-int4"), kv_dtypes=("auto", "int8"),
                    sparsity=("none", "2:4", "unstructured"), sparsity_levels=(0.3, 0.5),
                    distill_depths=(1.0, 0.75, 0.5))


def test_space_size_counts_every_point_once():
    points = list(SMALL.points())
    assert len(points) == SMALL.size == 4 * 2 * (1 + 1 + 2) * 3
    keys = {CompressionStrategy.model_validate_json(SMALL.strategy(**p).to_json()).to_json() for p in points}
    assert len(keys) == SMALL.size  # distinct points are distinct strategies


def test_keep_layers_only_with_a_format_other_than_the_compute_dtype():
    """bf16 blocks kept at bf16 are the same strategy as plain bf16: one point, never two names."""
    space = SearchSpace(weight_formats=("none", "bf16", "nf4"), keep_layers=(0, 1), sparsity=("none",),
                        compute_dtype="bf16")
    strategies = [space.strategy(**p) for p in space.points()]
    assert space.size == len(strategies) == 1 + 1 + 2
    assert sorted(s.summary() for s in strategies) == ["baseline", "bf16", "nf4", "nf4 keep 1+1 at bf16"]
    trial = optuna.trial.FixedTrial({"weights": "bf16"})
    assert space.suggest(trial).quantization.keep_first_layers == 0 and "keep_layers" not in trial.params


def test_space_asks_a_level_only_where_the_pattern_takes_one():
    trial = optuna.trial.FixedTrial({"weights": "nf4", "kv_dtype": "auto", "sparsity": "2:4",
                                     "distill_depth": 1.0})
    strategy = SMALL.suggest(trial)
    assert strategy.sparsity.pattern == "2:4" and strategy.sparsity.level == 0.5
    assert strategy.quantization.weights == "nf4" and strategy.distillation is None
    trial = optuna.trial.FixedTrial({"weights": "none", "kv_dtype": "int8", "sparsity": "unstructured",
                                     "sparsity_level_unstructured": 0.3, "distill_depth": 0.5})
    strategy = SMALL.suggest(trial)
    assert strategy.sparsity.level == 0.3 and strategy.distillation.depth_ratio == 0.5
    assert strategy.quantization.kv_cache == "int8" and strategy.quantization.weights == "bf16"


def test_default_space_follows_the_hardware():
    from planner.models import get_model

    spec = get_model(LLAMA)
    on_4090 = default_space(spec, CONSTRAINTS)
    on_t4 = default_space(spec, Constraints(max_memory_gb=15, gpu="Tesla T4"))
    assert "fp8" in on_4090.weight_formats and "fp8" not in on_t4.weight_formats  # T4 (sm75) has no fp8
    assert on_t4.compute_dtype == "fp16" and on_4090.compute_dtype == "bf16"
    assert "heads" in on_4090.sparsity and on_4090.size >= 1000


@pytest.mark.parametrize("field, value", [("weight_formats", ()), ("sparsity", ("diagonal",)),
                                          ("sparsity_levels", (1.5,)), ("kv_dtypes", ("fp9",)),
                                          ("distill_depths", (0.0,))])
def test_space_rejects_bad_choices(field, value):
    with pytest.raises(ValueError):
        SearchSpace(**{field: value})


def test_run_ranks_feasible_candidates_that_satisfy_every_constraint():
    result = run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=60, sampler="nsga2", seed=1)
    assert result.n_complete == 60 and result.n_failed == 0
    table = result.table
    # the uncompressed model, when sampled, is the reference (rank 0, first), not a ranked candidate
    reference = table["reference"].astype(bool)
    assert list(table[reference]["rank"]) == [0] * int(reference.sum()) and reference.sum() <= 1
    assert not reference.iloc[1:].any()
    table = table[~reference]
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert table["strategy_json"].is_unique  # equal strategies appear once
    feasible = table[table["feasible"]]
    assert len(feasible) > 0
    assert (feasible["quality_loss_pct"] <= 5 + 1e-9).all() and (feasible["memory_gib"] <= 16 + 1e-9).all()
    assert (feasible["why_not"] == "").all()
    infeasible = table[~table["feasible"]]
    assert (infeasible["why_not"] != "").all()
    # feasible rows come first, the Pareto front first among them
    assert table["feasible"].tolist() == sorted(table["feasible"].tolist(), reverse=True)
    assert table.iloc[0]["pareto"]
    assert result.evaluations <= result.n_complete
    best = result.best
    strategy = CompressionStrategy.from_json(best["strategy_json"])
    assert strategy.summary() == best["strategy"]


def test_trials_record_strategy_prediction_and_constraints(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=15, sampler="random", seed=0, storage=url, study_name="t")
    study = optuna.load_study(study_name="t", storage=url)
    for trial in study.trials:
        record = trial_record(trial)
        strategy = CompressionStrategy.from_json(record["strategy"])
        prediction = record["prediction"]
        assert prediction["summary"] == strategy.summary() == record["summary"]
        assert {"retained_pct", "low_pct", "high_pct", "basis"} <= set(prediction["quality"])
        assert set(record["constraint_values"]) == {"max_memory_gb", "max_accuracy_loss", "hardware"}
        assert trial.constraints["violation"] == pytest.approx(sum(record["constraint_values"].values()))
        feasible = trial.constraints["violation"] <= 0
        assert feasible == prediction["feasible"] == (not record["violations"])


def test_resume_continues_the_same_study_and_refuses_another_request(tmp_path):
    url = f"sqlite:///{tmp_path / 'fitplan.db'}"
    first = run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=12, sampler="random", seed=0, storage=url)
    assert not first.resumed and first.n_trials == 12
    again = run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=20, sampler="random", seed=0, storage=url)
    assert again.resumed and again.study_name == first.study_name and again.n_trials == 20
    done = run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=20, sampler="random", seed=0, storage=url)
    assert done.n_trials == 20  # the budget is the study's total: nothing more to do
    other = Constraints(max_memory_gb=12, max_accuracy_loss=5, gpu="RTX 4090")
    with pytest.raises(StudyMismatchError, match="constraints"):
        run_search(LLAMA, other, space=SMALL, n_trials=5, storage=url, study_name=first.study_name)


def test_a_prediction_that_raises_fails_one_trial_and_the_search_goes_on(monkeypatch):
    from planner.planning import candidate

    original = candidate.Evaluator.evaluate

    def flaky(self, strategy):
        if strategy.quantization is not None and strategy.quantization.weights == "nf4":
            raise FitplanError("nf4 prediction exploded for the test")
        return original(self, strategy)

    monkeypatch.setattr(candidate.Evaluator, "evaluate", flaky)
    result = run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=40, sampler="random", seed=3)
    assert result.n_failed > 0 and result.n_complete > 0 and result.n_failed + result.n_complete == 40
    failed = result.trials[result.trials["state"] == "FAIL"]
    assert failed["error"].str.contains("nf4 prediction exploded").all()


def test_a_combination_the_engine_cannot_run_fails_its_trial_with_the_reason():
    space = SMALL.model_copy(update={"kv_dtypes": ("fp8",)})  # the hf engine offers no fp8 KV cache
    result = run_search(LLAMA, CONSTRAINTS, space=space, n_trials=5, sampler="random", seed=0)
    assert result.n_failed == 5 and result.best is None
    assert result.trials["error"].str.contains("KV dtype fp8 is not offered by the hf engine").all()


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "nsga3"}, "unknown sampler 'nsga3'"),
    ({"objectives": ("quality_loss", "latency")}, "unknown objective 'latency'"),
    ({"n_trials": 0}, "n_trials"),
    ({"n_trials": float("nan")}, "n_trials"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        run_search(LLAMA, CONSTRAINTS, space=SMALL, **kwargs)


def test_a_constraint_that_empties_the_space_is_named():
    with pytest.raises(InvalidRequestError, match="no compressed weight format runs on"):
        run_search(LLAMA, Constraints(max_memory_gb=16, gpu="RTX 4090", engine="llamacpp"), n_trials=5)


def test_unreachable_storage_fails_within_seconds():
    import time

    start = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach"):
        open_storage("postgresql://nobody@127.0.0.1:1/none")
    assert time.monotonic() - start < 30  # connect timeout 5 s; generous for a loaded machine
    with pytest.raises(StorageError, match="not a database URL"):
        open_storage("nosuchdb://x/y")
    with pytest.raises(StorageError, match="does not exist"):
        open_storage("/no/such/dir/fitplan.db")


def test_pareto_layers_and_plots(tmp_path):
    assert non_dominated_layers([[1, 5], [2, 2], [3, 3], [5, 1], [4, 4]]) == [1, 1, 2, 1, 3]
    result = run_search(LLAMA, CONSTRAINTS, space=SMALL, n_trials=30, sampler="random", seed=2)
    paths = result.write(tmp_path / "out")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 10_000
    html = paths["html"].read_text()
    assert "<html>" in html and "Pareto front" in html and "<script src=\"http" not in html  # self-contained
    table = json.loads(paths["json"].read_text())["table"]
    assert len(table) == len(result.table)
    assert all(math.isfinite(row["memory_gib"]) for row in table if row["memory_gib"] is not None)
    assert paths["md"].read_text().startswith("# fitplan search")

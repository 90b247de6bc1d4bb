"""The closed loop (search.loop): selection, storage, refinement, re-scoring, round metrics, resume, CLI.

Fast tests (no torch): the planner scores a registry model and a fake execution returns measurements
from a known "truth" (the prior prediction with its damage scaled), so every figure is checkable.
One lean integration test runs a real 1-round loop on the tiny causal LM (marked ``exec``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import search.loop as loop_module
from planner.accuracy import predict_quality
from planner.accuracy.calibration import CalibrationStore
from planner.strategy import CompressionStrategy
from search.loop import (feasible_chance, plausibly_feasible, predictor_quality, select_candidates)
from search.measured import (MEASURED_PREFIX, RESCORED_PREFIX, ROUNDS_KEY, MeasuredCandidate, PredictedFigures,
                             digest, measured_checks)
from search.objective import strategy_key
from search.run import run_search
from search.space import SearchSpace

MODEL = "meta-llama/Llama-3.1-8B"
LIMITS = {"max_memory_gb": 16.0, "max_accuracy_loss": 5.0}
LOOP_LIMITS = {"max_memory_gb": 16.0, "max_accuracy_loss": 15.0}
# Quantization-only space (formats the default cloud_inference engine, vLLM, runs): today's calibration
# store corrects single-technique records, so every measurement of this space refines the predictor.
SPACE = SearchSpace(weight_formats=("none", "fp8", "gptq-int8", "gptq-int4", "awq-int4"),
                    kv_dtypes=("auto", "fp8"), keep_layers=(0, 1), sparsity=("none",))
FAILING_FORMAT = "awq-int4"  # fails for real in the fake execution


# Llama-3.1-8B's config.json (its public values), so the directory reads as the same model.
LLAMA_8B_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                   "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
                   "torch_dtype": "bfloat16", "tie_word_embeddings": False}


# -- selection on synthetic tables ---------------------------------------------------------------------
def _row(rank, name, retained, low, high, memory, *, feasible=True, pareto=False, measured=None):
    return {"rank": rank, "strategy": name, "quality_retained_pct": retained, "quality_low_pct": low,
            "quality_high_pct": high, "quality_loss_pct": 100 - retained, "memory_gib": memory, "speedup": 1.0,
            "feasible": feasible, "pareto": pareto, "strategy_json": json.dumps({"name": name}),
            "measured_status": measured}


def test_selection_starts_with_the_recommendation_and_never_remeasures():
    table = pd.DataFrame([
        _row(1, "measured-best", 99.0, 98.0, 99.5, 8.0, pareto=True, measured="ok"),
        _row(2, "top-unmeasured", 98.5, 97.0, 99.5, 7.0, pareto=True),
        _row(3, "other", 97.0, 95.5, 98.5, 6.0, pareto=True),
        _row(4, "third", 96.5, 95.2, 98.0, 5.0, pareto=True),
    ])
    picks = select_candidates(table, 2, LIMITS)
    assert list(picks["strategy"]) == ["top-unmeasured", picks["strategy"].iloc[1]]
    assert picks["selection"].iloc[0] == "the current recommendation"
    assert "measured-best" not in set(select_candidates(table, 10, LIMITS)["strategy"])
    assert len(select_candidates(table, 10, LIMITS)) == 3  # only the three unmeasured rows exist


def test_selection_skips_candidates_that_cannot_meet_the_limits():
    table = pd.DataFrame([
        _row(1, "ok", 99.0, 98.0, 99.5, 8.0, pareto=True),
        # quality: even the optimistic end of its interval loses more than 5%
        _row(2, "hopeless-quality", 80.0, 70.0, 90.0, 4.0, feasible=False),
        # memory: 40% above the budget, far outside the prediction's error band
        _row(3, "hopeless-memory", 99.9, 99.8, 100.0, 22.4, feasible=False),
        # just outside on quality but its interval reaches into the feasible side
        _row(4, "near", 94.0, 88.0, 98.0, 5.0, feasible=False),
        # memory 5% over: inside the band
        _row(5, "near-memory", 99.8, 99.6, 99.9, 16.8, feasible=False),
    ])
    chosen = select_candidates(table, 5, LIMITS)
    assert set(chosen["strategy"]) == {"ok", "near", "near-memory"}
    assert chosen.attrs["shortfall"] == "every plausibly feasible candidate (3 unmeasured) is picked"
    assert "shortfall" not in select_candidates(table, 2, LIMITS).attrs
    measured = table.assign(measured_status=["ok", None, None, "ok", "ok"])
    none = select_candidates(measured, 2, LIMITS)
    assert none.empty and none.attrs["shortfall"].startswith("no unmeasured candidate is plausibly feasible (3 "
                                                             "measured")
    rows = table.to_dict(orient="records")
    assert [plausibly_feasible(r, LIMITS) for r in rows] == [True, False, False, True, True]


def test_selection_favours_wide_intervals_and_spreads_along_the_front():
    table = pd.DataFrame([
        _row(1, "best", 99.5, 99.0, 99.8, 10.0, pareto=True),
        _row(2, "twin-of-best", 99.5, 99.0, 99.8, 10.01, pareto=True),
        _row(3, "far-narrow", 97.0, 96.8, 97.2, 4.0, pareto=True),
        _row(4, "far-wide", 97.0, 94.0, 99.5, 4.0, pareto=True),
        _row(5, "middle", 98.2, 98.0, 98.4, 7.0, pareto=True),
    ])
    picks = list(select_candidates(table, 2, LIMITS)["strategy"])
    assert picks == ["best", "far-wide"]  # the twin adds nothing; of two equal far points the uncertain one
    assert list(select_candidates(table, 3, LIMITS)["strategy"])[2] == "middle"  # not a twin of a pick


def test_feasible_chance_reads_the_interval():
    sure = {"quality_retained_pct": 99.0, "quality_low_pct": 98.0, "quality_high_pct": 99.5}
    straddle = {"quality_retained_pct": 95.0, "quality_low_pct": 90.0, "quality_high_pct": 99.0}
    unlikely = {"quality_retained_pct": 80.0, "quality_low_pct": 70.0, "quality_high_pct": 92.0}
    assert feasible_chance(sure, LIMITS) > 0.99
    assert feasible_chance(straddle, LIMITS) == pytest.approx(0.5)
    assert feasible_chance(unlikely, LIMITS) < 0.05
    assert feasible_chance(unlikely, {"max_memory_gb": 16}) == 1.0


# -- predictor quality and measured verdicts ------------------------------------------------------------
def _measured(round_, measured, predicted_by_state, memory=(1.0, 1.0), status="ok"):
    return MeasuredCandidate(key=str(measured) + str(round_), summary="s", round=round_, status=status,
                             quality_retained_pct=measured if status == "ok" else None, memory_gib=memory[1],
                             latency_ms=10.0, predicted={j: PredictedFigures(quality_retained_pct=p,
                                                                             quality_low_pct=p - 2, quality_high_pct=p + 2,
                                                                             memory_gib=memory[0], latency_ms=12.0)
                                                         for j, p in predicted_by_state.items()})


def test_predictor_quality_uses_only_held_out_rounds():
    ms = [_measured(1, 95.0, {1: 96.5}), _measured(1, 90.0, {1: 97.0}),
          _measured(2, 97.0, {1: 99.5, 2: 97.5}, memory=(1.1, 1.0)), _measured(2, 85.0, {1: 96.0, 2: 86.0}),
          _measured(2, 0.0, {1: 90.0, 2: 90.0}, status="failed")]
    first = predictor_quality(ms, 1)
    assert first["held_out"] == 4  # the failed run is not a quality measurement
    assert first["quality_loss_mae"] == pytest.approx((1.5 + 7 + 2.5 + 11) / 4)
    # predicted losses 3.5, 3, 0.5, 4 (ranks 3, 2, 1, 4) vs measured 5, 10, 3, 15 (2, 3, 1, 4): 1 - 6*2/60
    assert first["quality_spearman"] == pytest.approx(0.8)
    assert first["quality_coverage"] == 0.25  # only 95 inside 94.5-98.5
    assert first["latency_error_pct"] == pytest.approx(20.0)
    second = predictor_quality(ms, 2)  # round-1 measurements fitted it: not held out
    assert second["held_out"] == 2
    assert second["quality_loss_mae"] == pytest.approx(0.75)
    assert second["quality_spearman"] is None  # two points have no rank correlation
    assert second["quality_coverage"] == 1.0
    assert second["memory_error_pct"] == pytest.approx(5.0)


def test_measured_checks_name_each_broken_limit():
    m = _measured(1, 96.0, {1: 99.0}, memory=(1.0, 1.2))
    assert measured_checks(m, {"max_accuracy_loss": 5, "max_memory_gb": 1.5}, None) == []
    clauses = measured_checks(m, {"max_accuracy_loss": 3, "max_memory_gb": 1.0}, None)
    assert clauses == ["measured quality loss 4.0% > 3.0%", "measured memory 1.2 GiB > 1.0 GiB"]
    assert measured_checks(m, {"min_speedup": 1.5}, None) == [
        "speedup not verified: the uncompressed baseline's latency was not measured"]
    assert measured_checks(m, {"min_speedup": 1.5}, 20.0) == []  # 20 ms / 10 ms = 2x
    assert measured_checks(m, {"min_speedup": 2.5}, 20.0) == ["measured speedup 2.00x < 2.50x"]


# -- the loop on a registry model with a fake execution ----------------------------------------------------
def _truth(strategy: CompressionStrategy) -> float:
    """The 'measured' quality: the prior's damage x 3 (the priors are too optimistic for this model)."""
    prior = predict_quality(MODEL, strategy, metric="perplexity").retained_pct
    return 100.0 * math.exp(3.0 * math.log(prior / 100.0))


class FakeExecution:
    """Stands in for search.execution: measures from _truth, fails FAILING_FORMAT for real, counts calls."""

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[str] = []
        self.interrupt_after = interrupt_after

    def __call__(self, storage, study_name, jobs, request, *, progress):
        out = []
        for job in jobs:
            if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
                raise KeyboardInterrupt
            strategy = CompressionStrategy.model_validate_json(job["strategy_json"])
            self.calls.append(job["key"])
            fails = strategy.quantization is not None and strategy.quantization.weights == FAILING_FORMAT
            out.append(SimpleNamespace(
                key=job["key"], status="failed" if fails else "ok",
                reason="RuntimeError: kernel crashed" if fails else None,
                quality_retained_pct=None if fails else _truth(strategy), memory_gib=None if fails else 9.0,
                latency_ms=None if fails else 20.0, result_path=f"/runs/{digest(job['key'])}/result.json",
                worker="test:1", seconds=0.1, round=job["round"]))
        return out


@pytest.fixture()
def model_dir(tmp_path):
    directory = tmp_path / "llama"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    (directory / "model.safetensors").write_bytes(b"")
    return directory


def _search(model_dir, tmp_path, monkeypatch, fake, **options):
    monkeypatch.setattr(loop_module, "execute", fake)
    settings = dict(space=SPACE, n_trials=36, seed=3, sampler="tpe", model_dir=model_dir, execute_top=3, rounds=2,
                    out_dir=tmp_path / "out", storage=f"sqlite:///{tmp_path}/loop.db", study_name="loop")
    settings.update(options)
    return run_search(MODEL, LOOP_LIMITS, **settings)


def test_loop_measures_refines_rescores_and_reports(model_dir, tmp_path, monkeypatch, capsys):
    fake = FakeExecution()
    result = _search(model_dir, tmp_path, monkeypatch, fake, progress=True)
    said = capsys.readouterr()
    last = [line for line in (said.out + said.err).splitlines() if "round 2 done" in line][-1]
    best = result.best
    status = ("verified" if result.best_is_verified else "verified; an unmeasured candidate ranks above it"
              if best is not None and best.get("verified") else "not verified: predicted only")
    assert last.endswith(f"recommendation {best['strategy']} ({status})"), last
    assert len(fake.calls) == 6 and len(set(fake.calls)) == 6  # K=3 per round, never the same twice
    assert fake.calls[0] != strategy_key(CompressionStrategy())  # no min_speedup: no baseline run
    assert result.n_trials == 36
    assert set(result.trials["round"]) == {1, 2}
    table = result.table
    measured = table[table["measured_status"].notna()]
    assert len(measured) == 6
    ok = measured[measured["measured_status"] == "ok"]
    for row in ok.itertuples():
        strategy = CompressionStrategy.model_validate_json(row.strategy_json)
        assert row.measured_quality_retained_pct == pytest.approx(_truth(strategy))
        assert row.measured_memory_gib == 9.0 and row.measured_latency_ms == 20.0
        # planned for a GPU, run elsewhere: quality is verified by the measurement, memory stays predicted
        assert row.verified == (100 - row.measured_quality_retained_pct <= 15.0 and row.memory_gib <= 16.0)
        assert row.feasible == row.verified
    # every strategy was re-scored after the last round: quantization predictions are calibrated now
    quantized = table[table["strategy"].str.contains("int|nf4", regex=True)]
    assert quantized["basis"].str.startswith("calibrated").all()
    # the calibration store holds one record per successful run, with the uncalibrated prediction
    store = CalibrationStore.load(tmp_path / "out" / "calibration")
    assert len(store) == len(ok)
    metric = _first_prediction(tmp_path)["quality"]["metric"]
    for record in store.records:
        strategy = CompressionStrategy.model_validate(record.strategy)
        assert record.predicted_retained_pct == pytest.approx(  # the uncalibrated prediction
            predict_quality(MODEL, strategy, metric=metric).retained_pct)
        assert record.metric == "perplexity" and record.family == "llama"
    # round reports: round 1 = priors scored on all 6 (held out), round 2 = calibrated on round 1's records
    first, second = result.rounds
    assert first.predictor == "priors" and first.fit_records == 0
    assert second.fit_records == sum(1 for r in store.records if " round 1 " in r.source)
    assert first.held_out == len(ok) and second.held_out == sum(ok["strategy"].isin(
        [m.summary for m in _measurements(tmp_path).values() if m.round == 2]))
    assert first.executed == 3 and second.executed == 3 and second.evaluations == 6
    # on the same held-out candidates (round 2's), the calibrated predictor beats the priors: it learnt the
    # x3 damage from round 1
    round_two = [m for m in _measurements(tmp_path).values() if m.round == 2]
    assert predictor_quality(round_two, 2)["quality_loss_mae"] < predictor_quality(round_two, 1)["quality_loss_mae"]
    assert result.best is not None and result.best["verified"]


def _first_prediction(tmp_path):
    import optuna

    study = optuna.load_study(study_name="loop", storage=f"sqlite:///{tmp_path}/loop.db")
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0].user_attrs["fitplan"]["prediction"]


def _measurements(tmp_path):
    import optuna

    study = optuna.load_study(study_name="loop", storage=f"sqlite:///{tmp_path}/loop.db")
    return {k[len(MEASURED_PREFIX):]: MeasuredCandidate.model_validate(v) for k, v in study.user_attrs.items()
            if k.startswith(MEASURED_PREFIX)}


def test_a_real_failure_is_kept_with_its_reason_and_never_recommended(model_dir, tmp_path, monkeypatch):
    space = SearchSpace(weight_formats=(FAILING_FORMAT, "gptq-int4"), sparsity=("none",), kv_dtypes=("auto", "fp8"))
    result = _search(model_dir, tmp_path, monkeypatch, FakeExecution(), space=space, n_trials=12, rounds=1,
                     execute_top=4)
    failed = result.table[result.table["measured_status"].fillna("").str.startswith("failed")]
    assert len(failed) == 1
    row = failed.iloc[0]
    assert row["measured_status"] == "failed: RuntimeError: kernel crashed"
    assert not row["feasible"] and row["why_not"] == "measured failed: RuntimeError: kernel crashed"
    assert row["rank"] == len(result.table)  # ranked last
    assert result.best is None or FAILING_FORMAT not in result.best["strategy"]


def test_rescored_values_reach_the_table_and_the_next_sampler(model_dir, tmp_path, monkeypatch):
    import optuna

    result = _search(model_dir, tmp_path, monkeypatch, FakeExecution(), rounds=1)
    study = optuna.load_study(study_name="loop", storage=f"sqlite:///{tmp_path}/loop.db")
    rescored = {k: v for k, v in study.user_attrs.items() if k.startswith(RESCORED_PREFIX)}
    assert len(rescored) == len(result.table)
    # the trials keep the prediction they were made with (prior), the table shows the re-scored one
    first = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    made = first.user_attrs["fitplan"]["prediction"]["quality"]
    latest = rescored[RESCORED_PREFIX + digest(first.user_attrs["fitplan"]["strategy"])]["record"]
    if first.user_attrs["fitplan"]["prediction"]["strategy"].get("quantization"):
        assert made["basis"] == "prior" and latest["prediction"]["quality"]["basis"] == "calibrated"
    # the warm-started study of the next round holds each distinct strategy once, at its ranking values
    from search.objective import resolve_objectives
    from search.run import make_sampler

    runner = loop_module.Loop.__new__(loop_module.Loop)
    runner.study, runner.objectives = study, resolve_objectives(("quality_loss", "memory_gib", "cost_per_1m_tokens"))
    runner.seed, runner.sampler_name, runner.n_trials, runner.make_sampler = 0, "tpe", 36, make_sampler
    warm = runner._warm_study(2)
    assert len(warm.trials) == len(result.table)
    for trial, (values, violation) in zip(sorted(warm.trials, key=lambda t: t.number), result.ranking.values()):
        assert trial.values == pytest.approx(values)
        assert trial.constraints == {"violation": pytest.approx(1e6 if math.isinf(violation) else violation)}
    measured_ok = result.table[result.table["measured_status"] == "ok"].iloc[0]
    values, _ = result.ranking[measured_ok["strategy_json"]]
    assert values[0] == pytest.approx(100 - measured_ok["measured_quality_retained_pct"])  # measured loss


def test_an_interrupted_loop_resumes_without_re_executing(model_dir, tmp_path, monkeypatch):
    first = FakeExecution(interrupt_after=4)
    interrupted = _search(model_dir, tmp_path, monkeypatch, first)
    assert interrupted.interrupted and len(first.calls) == 4
    stored = _measurements(tmp_path)
    assert len(stored) == 3  # round 1 complete; round 2's first job was interrupted before its result
    second = FakeExecution()
    result = _search(model_dir, tmp_path, monkeypatch, second)
    assert not result.interrupted
    assert not set(second.calls) & {m.key for m in stored.values()}
    assert len(second.calls) == 3 and len(_measurements(tmp_path)) == 6
    again = FakeExecution()
    _search(model_dir, tmp_path, monkeypatch, again)
    assert again.calls == []  # everything done: nothing runs
    records = CalibrationStore.load(tmp_path / "out" / "calibration").records
    assert len({r.source for r in records}) == len(records)  # no record appended twice


def test_the_rounds_are_stored_in_the_study(model_dir, tmp_path, monkeypatch):
    import optuna

    from search.results import result_from_study

    result = _search(model_dir, tmp_path, monkeypatch, FakeExecution())
    study = optuna.load_study(study_name="loop", storage=f"sqlite:///{tmp_path}/loop.db")
    assert [r["round"] for r in study.user_attrs[ROUNDS_KEY]] == [1, 2]
    rebuilt = result_from_study(study)
    assert rebuilt.rounds == result.rounds
    assert rebuilt.table.drop(columns=[]).equals(result.table)
    text = rebuilt.to_markdown()
    assert "Predictor quality per round" in text
    # table.md: the rounds table within 80 columns too, its MAE kept, the rest named as in table.json
    rounds = text[text.index("## Predictor quality per round"):]
    table = [line for line in rounds.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(result.rounds) and all(len(line) <= 80 for line in table)
    assert "MAE" in table[0] and "table.json" in rounds
    assert json.loads(rebuilt.to_json())["rounds"][1]["round"] == 2


@pytest.mark.parametrize(("options", "message"), [
    ({"execute_top": 0, "rounds": 2}, "rounds, model_dir, out_dir only apply to a closed loop"),
    ({"execute_top": -1}, "execute_top must be a whole number from 1 to 64"),
    ({"rounds": 0}, "rounds must be a whole number from 1 to 20"),
    ({"workers": 2.5}, "workers must be a whole number"),
    ({"evaluator": "perplexty"}, "unknown evaluator 'perplexty'"),
    ({"out_dir": None}, "execute_top needs out_dir"),
    ({"device": "gpu"}, "unknown device 'gpu'"),
])
def test_bad_loop_input_is_one_clear_error(model_dir, tmp_path, monkeypatch, options, message):
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match=message):
        _search(model_dir, tmp_path, monkeypatch, FakeExecution(), **options)


def test_model_dir_without_weights_or_config(tmp_path, monkeypatch):
    from planner.errors import InvalidRequestError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidRequestError, match="has no config.json"):
        _search(empty, tmp_path, monkeypatch, FakeExecution())
    (empty / "config.json").write_text("{}")
    with pytest.raises(InvalidRequestError, match="has a config.json but no weights"):
        _search(empty, tmp_path, monkeypatch, FakeExecution())


# -- CLI ------------------------------------------------------------------------------------------------
def test_cli_runs_the_loop_and_prints_measured_columns(tmp_path, monkeypatch, capsys):
    from planner.cli import main

    model_dir = tmp_path / "small"  # a small llama: its CPU run fits the local budget
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        **LLAMA_8B_CONFIG, "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048, "max_position_embeddings": 256}))
    (model_dir / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(loop_module, "execute", FakeExecution())
    monkeypatch.setenv("COLUMNS", "80")
    code = main(["search", str(model_dir), "--deployment-target", "local", "--max-memory-gb", "4",
                 "--max-accuracy-loss", "15", "--trials", "16", "--seed", "1", "--execute-top", "2", "--rounds", "2",
                 "--storage", f"sqlite:///{tmp_path}/c.db", "--out", str(tmp_path / "cli")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "m.qual%" in out and "predictor of each round" in out
    assert "round 1/2" in err and "round 2 done" in err
    tables = [line for line in out.splitlines() if line[:1] in "┏┃┡│└"]
    assert tables and all(len(line) <= 80 for line in tables)
    assert " nan " not in out
    table = pd.read_csv(tmp_path / "cli" / "table.csv")
    rounds = json.loads((tmp_path / "cli" / "table.json").read_text())["rounds"]
    assert 1 <= rounds[0]["executed"] <= 2  # at most K per round, fewer when the rest is not worth a run
    assert table["measured_status"].notna().sum() == rounds[-1]["evaluations"] >= 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--rounds", "2"], "--rounds only apply with --execute-top K"),
    (["--execute-top", "2", "--eval", "perplexty"], "unknown evaluator 'perplexty'"),
    (["--execute-top", "2", "--eval-data", "/nonexistent/file.txt"], "/nonexistent/file.txt"),
    (["--execute-top", "0", "--eval", "perplexity"], "--eval only apply with --execute-top K"),
    (["--execute-top", "99"], "--execute-top must be a whole number from 1 to 64"),
    (["--execution-timeout", "60"], "--execution-timeout only apply with --execute-top K"),
    (["--execute-top", "2", "--execution-timeout", "0"], "--execution-timeout must be a number of seconds above 0"),
    (["--execute-top", "2", "--execution-timeout", "nan"], "--execution-timeout must be a finite number"),
])
def test_cli_bad_input_exits_2_with_one_line(model_dir, tmp_path, monkeypatch, capsys, argv, message):
    from planner.cli import main

    monkeypatch.setattr(loop_module, "execute", FakeExecution())
    code = main(["search", str(model_dir), "--max-memory-gb", "16", "--trials", "4", "--storage",
                 f"sqlite:///{tmp_path}/c.db", "--out", str(tmp_path / "cli"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


# -- integration: one real round on the tiny causal LM -------------------------------------------------------
@pytest.mark.exec
def test_one_real_round_on_the_tiny_llm(tmp_path):
    from tests.exec_helpers import tiny_llm_dir

    model = tiny_llm_dir().path
    space = SearchSpace(weight_formats=("none", "int8", "nf4"), sparsity=("none",))
    constraints = {"max_memory_gb": 4, "max_accuracy_loss": 50, "deployment_target": "local"}
    result = run_search(model, constraints, space=space, n_trials=6, seed=0, execute_top=2, rounds=1, out_dir=tmp_path / "out", storage=f"sqlite:///{tmp_path}/s.db",
                        study_name="tiny")
    measured = result.table[result.table["measured_status"].notna()]
    assert len(measured) == 2
    for row in measured.itertuples():
        assert row.measured_status == "ok", row.measured_status
        assert 0 < row.measured_quality_retained_pct <= 101
        assert row.measured_memory_gib > 0.05 and row.measured_latency_ms > 0
        assert json.loads(Path(row.measured_run).read_text())["status"] == "ok"
    assert len(CalibrationStore.load(tmp_path / "out" / "calibration")) >= 1
    assert result.rounds[0].held_out == 2 and result.rounds[0].quality_loss_mae is not None
    assert result.rounds[0].memory_error_pct is not None and result.rounds[0].latency_error_pct is not None
    verified = result.table[result.table["verified"]]
    assert result.best is not None and (verified.empty or result.best["verified"])
    # the records carry the raw predictions and this device's name: the device correction applies
    records = CalibrationStore.load(tmp_path / "out" / "calibration").records
    assert all(r.predicted_memory_bytes and r.predicted_latency_ms and r.device for r in records)


@pytest.mark.parametrize("sampler", ["nsga2", "random"])
def test_later_rounds_sample_with_every_sampler(model_dir, tmp_path, monkeypatch, sampler):
    fake = FakeExecution()
    result = _search(model_dir, tmp_path, monkeypatch, fake, sampler=sampler, n_trials=24)
    assert result.n_trials == 24 and set(result.trials["round"]) == {1, 2}
    assert len(result.rounds) == 2


def test_a_resume_with_another_evaluator_is_refused(model_dir, tmp_path, monkeypatch):
    from planner.errors import InvalidRequestError

    _search(model_dir, tmp_path, monkeypatch, FakeExecution(), rounds=1)
    more = FakeExecution()
    _search(model_dir, tmp_path, monkeypatch, more, rounds=2, execute_top=2)  # more rounds: allowed
    assert len(more.calls) <= 2
    data = tmp_path / "eval.txt"
    data.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog." * 20 for i in range(40)))
    with pytest.raises(InvalidRequestError, match="ran a loop with a different eval_data"):
        _search(model_dir, tmp_path, monkeypatch, FakeExecution(), eval_data=data)


def test_without_a_storage_the_loop_keeps_its_study_in_the_output_directory(model_dir, tmp_path, monkeypatch):
    first = FakeExecution()
    _search(model_dir, tmp_path, monkeypatch, first, storage=None, rounds=1)
    assert (tmp_path / "out" / "search.db").is_file() and first.calls
    again = FakeExecution()
    result = _search(model_dir, tmp_path, monkeypatch, again, storage=None, rounds=1)
    assert again.calls == [] and result.resumed


def test_selection_weighs_the_cost_of_a_run():
    table = pd.DataFrame([
        _row(1, "best", 99.5, 99.0, 99.8, 10.0, pareto=True),
        _row(2, "student", 97.0, 94.0, 99.5, 4.0, pareto=True),
        _row(3, "plain", 97.5, 96.0, 99.0, 5.0, pareto=True),
    ])
    assert list(select_candidates(table, 2, LIMITS)["strategy"]) == ["best", "student"]  # wider, farther
    costly = select_candidates(table, 2, LIMITS, cost=lambda row: 16.0 if row["strategy"] == "student" else 1.0)
    assert list(costly["strategy"]) == ["best", "plain"]
    alone = select_candidates(table[table["strategy"] == "student"], 1, LIMITS, cost=lambda row: 16.0)
    assert list(alone["strategy"]) == ["student"]  # still measured when it is the recommendation


def test_run_cost_learns_the_training_ratio_from_the_study():
    from planner.strategy import DistillationSpec, QuantizationSpec
    from search.loop import TRAINING_COST_PRIOR, run_cost

    student = CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5))
    plain = CompressionStrategy(quantization=QuantizationSpec(weights="nf4"))
    rows = [{"strategy_json": s.to_json()} for s in (student, plain)]
    assert [run_cost([])(r) for r in rows] == [TRAINING_COST_PRIOR, 1.0]
    done = [MeasuredCandidate(key=strategy_key(student), summary="s", round=1, status="ok", seconds=120.0),
            MeasuredCandidate(key=strategy_key(plain), summary="p", round=1, status="ok", seconds=20.0)]
    assert [run_cost(done)(r) for r in rows] == [6.0, 1.0]


def test_a_round_skips_candidates_not_worth_a_run():
    table = pd.DataFrame([
        _row(1, "best", 99.5, 99.0, 99.8, 10.0, pareto=True),
        # just outside, its interval barely reaches the limit: ~2% chance of meeting it
        _row(2, "long-shot", 90.0, 85.0, 97.2, 5.0, feasible=False),
        _row(3, "student", 96.5, 90.0, 99.0, 4.0, feasible=False),
    ])
    assert set(select_candidates(table, 3, LIMITS)["strategy"]) == {"best", "long-shot", "student"}
    expensive = select_candidates(table, 3, LIMITS, cost=lambda row: 16.0 if row["strategy"] == "student" else 1.0)
    assert list(expensive["strategy"]) == ["best", "long-shot"]  # the interval straddles the limit: worth a run


# -- the uncompressed model is the reference, not a candidate ------------------------------------------------
BASELINE_KEY = strategy_key(CompressionStrategy())
# bf16 Llama-3.1-8B fits an H100 (engine hf there: no fp8 KV cache), so the baseline is feasible
ROOMY_LIMITS = {"gpu": "NVIDIA H100 SXM", "max_accuracy_loss": 15.0}
ROOMY_SPACE = SPACE.model_copy(update={"kv_dtypes": ("auto",)})


def test_the_uncompressed_reference_is_never_executed_nor_recommended(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "execute", fake := FakeExecution())
    result = run_search(MODEL, ROOMY_LIMITS, space=ROOMY_SPACE, n_trials=36, seed=3, sampler="tpe", model_dir=model_dir,
                        execute_top=3, rounds=2, out_dir=tmp_path / "out", storage=f"sqlite:///{tmp_path}/loop.db",
                        study_name="loop")
    table = result.table
    reference = table[table["reference"]]
    assert len(reference) == 1  # the sampler proposed it: it is in the table, as the reference
    row = reference.iloc[0]
    assert row["rank"] == 0 and row["strategy"] == "baseline (reference)" and not row["pareto"]
    assert row["feasible"] and row["quality_loss_pct"] == 0  # it meets the limits, and is best on quality
    assert BASELINE_KEY not in fake.calls and len(fake.calls) == 6  # no execution spent on it
    candidates = table[~table["reference"]]
    assert list(candidates["rank"]) == list(range(1, len(candidates) + 1))
    assert not result.best.get("reference") and result.best["verified"] and not result.no_compression_needed


def _baseline_result(tmp_path, model_dir, evaluator="perplexity"):
    from executors.result import ExecutionResult, LatencyMeasurement, QualityMeasurement

    run = tmp_path / "baseline-run"
    run.mkdir()
    result = ExecutionResult(
        status="ok", run_dir=str(run), model_dir=str(model_dir), strategy=CompressionStrategy().model_dump(mode="json"),
        strategy_summary="baseline", device="cpu", isolated=True, peak_rss_bytes=17 * 2**30, wall_seconds=12.0,
        latency=LatencyMeasurement(batch_size=1, seq_len=8, warmup=1, repeats=3, median_ms=40.0, min_ms=39.0,
                                   max_ms=41.0, tokens_per_s=200.0),
        quality=QualityMeasurement(evaluator=evaluator, metric="perplexity", higher_is_better=False, compressed=9.0,
                                   baseline=9.0, retained_pct=100.0, baseline_cached=False))
    (run / "result.json").write_text(result.model_dump_json())
    return run / "result.json"


def test_a_measured_baseline_run_is_stored_as_the_reference_and_not_run_again(model_dir, tmp_path, monkeypatch):
    """min_speedup needs the baseline's measured latency: given the lab's baseline run, the loop stores it
    (the table shows it, measured, as the reference) instead of executing the uncompressed model."""
    from search.loop import REFERENCE_SELECTION

    space = SearchSpace(weight_formats=("fp8", "gptq-int8", "gptq-int4"), kv_dtypes=("auto", "fp8"),
                        keep_layers=(0, 1), sparsity=("none",))  # the sampler cannot propose the baseline
    path = _baseline_result(tmp_path, model_dir)
    fake = FakeExecution()
    result = _search(model_dir, tmp_path, monkeypatch, fake, space=space, n_trials=12,
                     baseline_run=path, **{})
    assert BASELINE_KEY not in fake.calls and len(fake.calls) == 6
    reference = result.table[result.table["reference"]]
    assert len(reference) == 1
    row = reference.iloc[0]
    assert row["rank"] == 0 and row["measured_status"] == "ok" and row["measured_latency_ms"] == 40.0
    assert row["measured_memory_gib"] == pytest.approx(17.0) and row["measured_quality_retained_pct"] == 100.0
    assert row["measured_run"] == str(path.resolve())
    stored = _measurements(tmp_path)[digest(BASELINE_KEY)]
    assert stored.round == 0 and stored.selection == REFERENCE_SELECTION
    # the speedup limit: with the reference stored, no execution is spent on the baseline either
    other = tmp_path / "speed"
    other.mkdir()
    fake = FakeExecution()
    monkeypatch.setattr(loop_module, "execute", fake)
    run_search(MODEL, {**LOOP_LIMITS, "min_speedup": 1.2}, space=space, n_trials=12, seed=3, sampler="tpe",
               model_dir=model_dir, execute_top=2, rounds=1, out_dir=other, storage=f"sqlite:///{other}/s.db",
               study_name="speed", baseline_run=path)
    assert BASELINE_KEY not in fake.calls and fake.calls


@pytest.mark.parametrize(("change", "message"), [
    ({"evaluator": "fidelity"}, "was evaluated with 'fidelity', the loop with 'perplexity'"),
    ({"missing": True}, "is not a readable executors result.json"),
])
def test_a_wrong_baseline_run_is_one_clear_error(model_dir, tmp_path, monkeypatch, change, message):
    from planner.errors import InvalidRequestError

    path = _baseline_result(tmp_path, model_dir, evaluator=change.get("evaluator", "perplexity"))
    if change.get("missing"):
        path = tmp_path / "nowhere" / "result.json"
    with pytest.raises(InvalidRequestError, match=message):
        _search(model_dir, tmp_path, monkeypatch, FakeExecution(), baseline_run=path)


def test_no_compression_needed_is_said_when_only_the_uncompressed_model_meets_the_limits(tmp_path, capsys):
    from search.report import deployment_note

    limits = {**ROOMY_LIMITS, "max_accuracy_loss": 1e-6}  # any compression loses more
    result = run_search(MODEL, limits, space=ROOMY_SPACE, n_trials=20, seed=3, sampler="tpe")
    assert result.table[~result.table["reference"]]["feasible"].sum() == 0
    assert result.no_compression_needed and result.best["reference"]
    from planner.planning.constraints import Constraints

    assert deployment_note(result.best, Constraints(**limits)).startswith("No compression needed")


# -- per-execution timeout ---------------------------------------------------------------------------------
class TimeoutRecorder(FakeExecution):
    """The fake execution, recording each job's timeout; the job named SLOW 'times out' as the isolation says."""

    SLOW = "gptq-int8"

    def __init__(self):
        super().__init__()
        self.timeouts: list[tuple[int, float]] = []

    def __call__(self, storage, study_name, jobs, request, *, progress):
        self.timeouts += [(job["round"], job["timeout_s"]) for job in jobs]
        out = super().__call__(storage, study_name, jobs, request, progress=progress)
        for job, m in zip(jobs, out):
            if CompressionStrategy.model_validate_json(job["key"]).summary().startswith(self.SLOW):
                m.status, m.reason = "failed", f"timed out after {job['timeout_s']:g} s during phase 'evaluate' (killed)"
                m.quality_retained_pct = m.memory_gib = m.latency_ms = None
        return out


def test_every_execution_gets_the_given_timeout_and_a_timed_out_run_is_kept_as_failed(model_dir, tmp_path,
                                                                                       monkeypatch):
    fake = TimeoutRecorder()
    result = _search(model_dir, tmp_path, monkeypatch, fake, execution_timeout=45)
    assert fake.timeouts and all(t == 45 for _, t in fake.timeouts)
    stored = _measurements(tmp_path).values()
    assert all(m.timeout_s == 45 for m in stored)
    timed_out = [m for m in stored if m.summary.startswith(TimeoutRecorder.SLOW)]
    assert timed_out, "the space has gptq-int8 candidates; one must have been executed"
    for m in timed_out:
        assert m.status == "failed" and m.reason.startswith("timed out after 45 s")
        row = result.table[result.table["strategy"] == m.summary].iloc[0]
        assert row["measured_status"].startswith("failed: timed out after 45 s") and not row["feasible"]
    assert result.best is not None and not result.best["strategy"].startswith(TimeoutRecorder.SLOW)


def test_the_default_timeout_comes_from_the_expected_cost_of_the_run(model_dir, tmp_path, monkeypatch):
    from search.loop import DEFAULT_TIMEOUT_S, MIN_TIMEOUT_S, TIMEOUT_FACTOR, execution_timeout

    fake = TimeoutRecorder()
    _search(model_dir, tmp_path, monkeypatch, fake)
    # round 1: nothing measured, no profile: the default; round 2: 10x the measured 0.1 s, floored
    assert {t for r, t in fake.timeouts if r == 1} == {DEFAULT_TIMEOUT_S}
    assert {t for r, t in fake.timeouts if r == 2} == {MIN_TIMEOUT_S}
    plain = CompressionStrategy.model_validate_json(strategy_key(CompressionStrategy.from_json(
        '{"quantization": {"weights": "nf4"}}')))
    student = CompressionStrategy.from_json('{"distillation": {"depth_ratio": 0.5}}')
    runs = [MeasuredCandidate(key=strategy_key(plain), summary="nf4", round=1, status="ok", seconds=60.0)]
    assert execution_timeout(plain, runs) == (TIMEOUT_FACTOR * 60.0, "10x the expected 60 s (this study's runs)")
    seconds, source = execution_timeout(student, runs)  # a student trains: the prior ratio until measured
    assert seconds == TIMEOUT_FACTOR * 60.0 * loop_module.TRAINING_COST_PRIOR and "960 s" in source
    assert execution_timeout(plain, [], profile_seconds=50.0) == (500.0, "10x the expected 50 s (the profile's cost)")
    assert execution_timeout(plain, runs, given=7.5) == (7.5, "given")


@pytest.mark.parametrize("value", [0, -3, float("nan"), float("inf"), "60"])
def test_a_bad_execution_timeout_is_one_clear_error(model_dir, tmp_path, monkeypatch, value):
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="execution_timeout must be a number of seconds above 0"):
        _search(model_dir, tmp_path, monkeypatch, FakeExecution(), execution_timeout=value)

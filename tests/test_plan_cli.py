"""Constraints validation and the `fitplan plan` / `fitplan compare` commands."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from planner.cli import main
from planner.planning import Constraints, deployment_targets
from planner.planning.flags import CONSTRAINT_FLAGS

MODEL = "meta-llama/Llama-3.1-8B"


# -- Constraints ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected(value):
    with pytest.raises(ValidationError, match="finite"):
        Constraints(max_memory_gb=value)
    with pytest.raises(ValidationError):
        Constraints(gpu="RTX 4090", min_speedup=value)


def test_without_hardware_the_seed_deployment_applies_and_cpu_has_no_speed():
    seed = Constraints(max_memory_gb=16, min_speedup=1.5)
    assert seed.deployment_target == "cloud_inference" and seed.gpu == "NVIDIA L4"
    assert seed.memory_limit_gib() == 16
    with pytest.raises(ValidationError, match="memory budget"):
        Constraints(max_accuracy_loss=5, deployment_target="cpu")
    with pytest.raises(ValidationError, match="min_speedup need a GPU"):
        Constraints(max_memory_gb=16, min_speedup=1.5, deployment_target="cpu")
    with pytest.raises(ValidationError, match="apply to inference"):
        Constraints(gpu="RTX 4090", mode="fine-tuning", min_tokens_per_s=10)
    with pytest.raises(ValidationError, match="no cloud price"):
        Constraints(gpu="RTX 3090", max_cost_per_hour=2)
    with pytest.raises(ValidationError, match="is a capacity"):
        Constraints(gpu="16GB", min_speedup=2)
    assert Constraints(gpu="16GB", max_accuracy_loss=2).memory_limit_gib() == 16


def test_unknown_target_engine_and_gpu_say_what_is_allowed():
    with pytest.raises(ValidationError, match="cloud_inference"):
        Constraints(max_memory_gb=16, deployment_target="cloud-inferance")
    with pytest.raises(Exception, match="vllm"):
        Constraints(gpu="RTX 4090", engine="vlm")


def test_presets_fill_only_what_is_unset():
    seed = Constraints(max_memory_gb=16, deployment_target="cloud_inference")
    preset = deployment_targets()["cloud_inference"]
    assert (seed.gpu, seed.resolved_engine, seed.resolved_batch, seed.resolved_context) == (
        "NVIDIA L4", preset.engine, preset.batch, preset.context)
    assert seed.memory_limit_gib() == 16
    mine = Constraints(max_memory_gb=16, deployment_target="cloud_inference", gpu="H100 SXM", batch=1)
    assert mine.gpu == "NVIDIA H100 SXM" and mine.resolved_batch == 1 and mine.resolved_engine == "vllm"
    assert mine.memory_limit_gib() == 16  # the budget is below the H100's capacity
    assert Constraints(gpu="RTX 4090").memory_limit_gib() == 24
    for name, target in deployment_targets().items():
        assert target.source and target.description, name


# -- fitplan plan ------------------------------------------------------------------------------

SEED_ARGS = ["plan", MODEL, "--max-memory-gb", "16", "--max-accuracy-loss", "5", "--min-speedup", "1.5"]


def test_plan_command_readable_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(SEED_ARGS) == 0  # the command: no GPU named, the seed's cloud_inference applies
    out = capsys.readouterr().out
    assert "preset cloud_inference" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for text in ("retained % [80%]", "basis", "Recommended:", "Nearest misses:", "prior", "Pareto front"):
        assert text in out


def test_plan_on_cpu_explains_speed_needs_a_gpu(capsys):
    assert main([*SEED_ARGS, "--deployment-target", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--min-speedup need a GPU" in err and "Traceback" not in err


def test_plan_json_and_csv(capsys):
    from planner.planning import TABLE_COLUMNS

    assert main([*SEED_ARGS, "--deployment-target", "cloud_inference", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    from planner.strategy import STRATEGY_VERSION

    assert payload["recommended"]["strategy"]["version"] == STRATEGY_VERSION
    assert payload["n_feasible"] == len(payload["candidates"]) > 0
    assert main([*SEED_ARGS, "--gpu", "RTX 4090", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",") == list(TABLE_COLUMNS)


@pytest.mark.parametrize("flag, value, message", [
    ("--max-memory-gb", "nan", "--max-memory-gb needs a finite number"),
    ("--max-accuracy-loss", "-1", "--max-accuracy-loss must not be negative"),
    ("--gpus", "0", "--gpus must be at least 1"),
    ("--batch", "two", "--batch needs a whole number"),
    ("--min-speedup", "inf", "--min-speedup needs a finite number"),
    ("--deployment-target", "moon", "--deployment-target 'moon' is not one of cloud_inference, edge"),
])
def test_plan_bad_flags_exit_2_naming_the_flag(capsys, flag, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["plan", MODEL, "--gpu", "RTX 4090", flag, value])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_plan_accuracy_loss_above_100_names_the_flag(capsys):
    assert main(["plan", MODEL, "--gpu", "RTX 4090", "--max-accuracy-loss", "150"]) == 2
    assert "--max-accuracy-loss" in capsys.readouterr().err


def test_constraint_flags_cover_every_constraint_field():
    assert set(CONSTRAINT_FLAGS) == set(Constraints.model_fields)


# -- fitplan compare ---------------------------------------------------------------------------

def test_compare_prints_the_seed_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["compare", MODEL, "--gpu", "RTX 4090"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()[:4] in ("fp16", "int8", "nf4 ")}
    assert set(rows) == {"fp16", "int8", "nf4"}


def test_compare_json_numbers(capsys):
    from planner.planning.compare import COMPARE_COLUMNS

    assert main(["compare", MODEL, "--gpu", "RTX 4090", "--formats", "fp16,int8,nf4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["format"] for r in rows] == ["fp16", "int8", "nf4"] and set(rows[0]) == set(COMPARE_COLUMNS)
    memory = [r["memory_gib"] for r in rows]
    assert memory[0] > memory[1] > memory[2]
    assert all(r["gpus_needed"] == 1 for r in rows)
    assert rows[0]["retained_pct"] == 100.0 and rows[2]["retained_pct"] < rows[1]["retained_pct"] < 100
    assert rows[0]["purchase_usd"] == 1599.0  # one RTX 4090 at its launch price
    for r in rows:
        assert r["utilization_pct"] == pytest.approx(100 * r["memory_gib"] / 24.0)


def test_compare_unknown_format_is_one_line(capsys):
    assert main(["compare", MODEL, "--gpu", "RTX 4090", "--formats", "fp16,int9"]) == 2
    err = capsys.readouterr().err
    assert "int9" in err and len(err.strip().splitlines()) == 1


def test_plan_all_lists_infeasible_candidates_with_their_violations(capsys):
    assert main([*SEED_ARGS, "--all", "--csv"]) == 0
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    infeasible = [r for r in rows if r["feasible"] == "False"]
    assert infeasible and all(r["violations"] for r in infeasible)
    assert all(r["memory_gib"] for r in rows)  # --all runs every candidate through the memory model

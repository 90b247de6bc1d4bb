"""``fitplan lab``: bad input, the predicted-only lab without torch, checkpoints and the refusal to mix labs."""

from __future__ import annotations

import json
import sys

import pytest

from planner.cli import main

LIMITS = ["--max-memory-gb", "1", "--max-accuracy-loss", "3"]


@pytest.fixture(scope="module")
def minilm():
    from executors import minilm_dir

    return minilm_dir()


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("file", "is a file; pass the model's directory"),
    ("empty", "has no config.json"),
    ("config-only", "has a config.json but no weights"),
])
def test_a_model_dir_without_config_or_weights_is_one_line_exit_2(tmp_path, capsys, layout, message):
    target = tmp_path / "model"
    if layout == "file":
        target.write_text("not a model")
    elif layout != "missing":
        target.mkdir()
        if layout == "config-only":
            (target / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["lab", str(target), *LIMITS, "--out", str(tmp_path / "lab")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "MODEL_DIR" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "lab").exists()  # refused before any work


@pytest.mark.parametrize("flags, message", [
    (["--execute-top", "0"], "--execute-top must be between 1 and 64"),
    (["--rounds", "x"], "--rounds needs a whole number"),
    (["--max-memory-gb", "nan"], "--max-memory-gb needs a finite number"),
])
def test_bad_flags_exit_2_naming_the_flag(minilm, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        main(["lab", str(minilm), *LIMITS, *flags, "--out", str(tmp_path / "lab")])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("value", "message"), [("0", "must be a number of seconds above 0"),
                                               ("-5", "must be a number of seconds above 0"),
                                               ("inf", "must be a finite number")])
def test_a_bad_execution_timeout_exits_2_before_anything_runs(minilm, tmp_path, capsys, value, message):
    assert main(["lab", str(minilm), *LIMITS, "--execution-timeout", value, "--out", str(tmp_path / "lab")]) == 2
    err = capsys.readouterr().err
    assert f"--execution-timeout {message}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "lab" / "analysis.json").exists()


def test_max_accuracy_loss_is_required(minilm, tmp_path, capsys):
    assert main(["lab", str(minilm), "--max-memory-gb", "1", "--out", str(tmp_path / "lab")]) == 2
    assert "--max-accuracy-loss is required" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(minilm, tmp_path, capsys):
    (tmp_path / "lab").write_text("")
    assert main(["lab", str(minilm), *LIMITS, "--out", str(tmp_path / "lab")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.fixture(scope="module")
def predicted_lab(minilm, tmp_path_factory):
    """The lab with torch, transformers and bitsandbytes unimportable (as without the exec extra)."""
    out = tmp_path_factory.mktemp("lab") / "lab"
    patch = pytest.MonkeyPatch()
    for name in ("torch", "transformers", "bitsandbytes"):
        patch.setitem(sys.modules, name, None)  # import torch -> ImportError
    try:
        import contextlib
        import io

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["lab", str(minilm), *LIMITS, "--trials", "20", "--out", str(out)])
    finally:
        patch.undo()
    return out, code, stdout.getvalue(), stderr.getvalue()


def test_without_torch_the_lab_stops_after_the_predicted_steps_with_one_clear_message(predicted_lab):
    out, code, stdout, stderr = predicted_lab
    assert code == 0, stderr
    assert stdout.count('pip install ".[exec]"') == 1 and "Stopped after the predicted steps" in stdout
    assert "fitplan[exec]" not in stdout + stderr  # no PyPI name that does not exist
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["complete"] is False and analysis["baseline"]["status"] == "not run"
    assert analysis["model"]["parameters"] == 22_713_216 and analysis["model"]["breakdown"]
    strategy = json.loads((out / "strategy.json").read_text())
    assert strategy["complete"] is False and strategy["profile"] is None
    assert strategy["search"]["trials"] == 20 and strategy["plan"]["n_candidates"] > 0
    assert not (out / "implementation.json").exists() and not (out / "validation.json").exists()
    assert not (out / "runs").exists()  # nothing executed
    report = (out / "report.html").read_text()
    assert "predictions only" in report and "Stopped after the predicted steps" in report
    assert "implementation: not run: torch" in stdout


def test_a_lab_directory_is_never_mixed_with_another_request(predicted_lab, minilm, capsys):
    out = predicted_lab[0]
    assert main(["lab", str(minilm), "--max-memory-gb", "2", "--max-accuracy-loss", "3", "--trials", "20",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a lab with other settings: --max-memory-gb 1.0 (asked: 2.0)." in err, err


@pytest.fixture(scope="module")
def full_lab(minilm, tmp_path_factory):
    """The whole lab on MiniLM with the exec extra: one round of one executed candidate, exported."""
    pytest.importorskip("torch")
    import contextlib
    import io

    out = tmp_path_factory.mktemp("full") / "lab"
    command = ["lab", str(minilm), *LIMITS, "--trials", "40", "--execute-top", "1", "--rounds", "1", "--save-best",
               "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(command)
    return out, command, code, stdout.getvalue()


def test_the_lab_runs_every_step_and_verifies_and_exports_the_recommendation(full_lab):
    out, _, code, stdout = full_lab
    steps = {step: json.loads((out / f"{step}.json").read_text()) for step in
             ("analysis", "strategy", "implementation", "validation")}
    assert all(found["complete"] for found in steps.values())
    baseline = steps["analysis"]["baseline"]
    assert baseline["status"] == "ok" and baseline["quality_retained_pct"] == pytest.approx(100.0)
    assert baseline["memory_gib"] > 0 and baseline["latency_ms"] > 0
    assert steps["strategy"]["profile"]["entries"] > 0
    implementation = steps["implementation"]
    assert implementation["executions"] >= 1 and len(implementation["rounds"]) == 1
    # the uncompressed reference is step 1's baseline run, not one of the candidates the loop executed
    assert implementation["executions"] == len(implementation["measured"])
    assert not any(row.get("reference") for row in implementation["measured"])
    validation = steps["validation"]["validation"]
    checks = {c["constraint"]: c for c in validation["checks"]}
    assert set(checks) == {"max_memory_gb", "max_accuracy_loss"}
    # One round of one execution runs the current recommendation; on MiniLM with these limits it is a
    # near-lossless format well under 1 GiB, so the lab must verify and export it.
    assert validation["verified"], validation["reason"]
    assert checks["max_memory_gb"]["measured"] <= 1 and checks["max_accuracy_loss"]["measured"] <= 3
    assert validation["export"]["status"] == "ok" and code == 0, stdout
    export = validation["export"]  # the recommendation itself, or the reason it could not be exported
    assert export["strategy"] == validation["strategy"] or "cannot be exported" in export["reason"]
    report = (out / "report.html").read_text()
    assert "measured quality %" in report and "measured GiB" in report and 'id="rounds"' in report


def test_the_lab_baseline_is_the_loops_measured_reference_and_never_executed_again(full_lab):
    """Step 1's baseline run is stored in the loop's study: the table shows it measured, as the reference
    (rank 0), and the loop spends no execution on the uncompressed model."""
    import optuna

    from search.results import result_from_study

    out = full_lab[0]
    baseline = json.loads((out / "analysis.json").read_text())["baseline"]
    study = optuna.load_study(study_name="lab", storage=f"sqlite:///{out / 'lab.db'}")
    table = result_from_study(study).table
    reference = table[table["reference"].astype(bool)]
    assert len(reference) == 1 and reference.iloc[0]["rank"] == 0
    assert reference.iloc[0]["strategy"] == "baseline (reference)" and reference.iloc[0]["measured_status"] == "ok"
    assert reference.iloc[0]["measured_latency_ms"] == pytest.approx(baseline["latency_ms"])
    assert reference.iloc[0]["measured_run"] == baseline["result_path"]
    runs = [json.loads(line) for line in (out / "runs" / "results.jsonl").read_text().splitlines() if line.strip()]
    assert sum(r["strategy_summary"] == "baseline" for r in runs) == 1  # step 1's run only


def test_the_lab_report_renders_in_headless_chromium(full_lab, tmp_path):
    from tests.browser import dump_dom

    out = full_lab[0]
    dom, body = dump_dom(out / "report.html", tmp_path / "profile")
    assert 'data-js-errors=""' in body and 'data-rendered="yes"' in body, body
    for table in ("tradeoffs", "baseline", "rounds", "checks"):
        assert f'id="{table}"' in dom
    assert "Predictions only" not in dom and "(predicted and measured)" in dom


def test_the_exported_model_reloads_and_matches_the_measured_quality(full_lab, minilm):
    out, _, code, stdout = full_lab
    validation = json.loads((out / "validation.json").read_text())["validation"]
    assert validation["export"]["status"] == "ok", validation["reason"]
    import torch
    from transformers import AutoModel, AutoTokenizer

    exported = AutoModel.from_pretrained(validation["export"]["path"]).eval()
    original = AutoModel.from_pretrained(minilm).eval()
    tokenizer = AutoTokenizer.from_pretrained(validation["export"]["path"])
    batch = tokenizer(["The lab exports the model it verified.", "Compression keeps what matters."],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = exported(**batch).last_hidden_state, original(**batch).last_hidden_state
    cosine = torch.nn.functional.cosine_similarity(a.mean(1), b.mean(1)).min().item()
    assert cosine > 0.9  # the compressed model, close to the original (its measured fidelity is >= 97%)


def test_save_best_that_exports_nothing_is_a_failure(minilm, tmp_path, capsys):
    """No strategy fits 0.05 GiB: the lab runs to its report but --save-best exported nothing, so exit 1."""
    pytest.importorskip("torch")
    out = tmp_path / "lab"
    code = main(["lab", str(minilm), "--max-memory-gb", "0.05", "--max-accuracy-loss", "3", "--trials", "10",
                 "--execute-top", "1", "--rounds", "1", "--save-best", "--quiet", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    validation = json.loads((out / "validation.json").read_text())["validation"]
    assert not validation["verified"] and validation["export"]["status"] == "not exported"
    assert "nothing exported" in printed.out + printed.err
    assert not (out / "best-model").exists()


def test_a_rerun_resumes_every_step_and_executes_nothing_again(full_lab, capsys):
    out, command, _, _ = full_lab
    runs_before = sorted(p.name for p in (out / "runs").glob("*/*") if p.is_dir())
    assert main(command) == full_lab[2]
    printed = capsys.readouterr().out
    assert "analysis: resumed" in printed and "implementation: resumed" in printed
    assert "validation: resumed" in printed
    assert sorted(p.name for p in (out / "runs").glob("*/*") if p.is_dir()) == runs_before


def test_a_gpu_target_measured_on_this_cpu_searches_only_formats_its_engine_runs(minilm):
    """The seed's --deployment-target cloud_inference (vLLM on an L4), executed here on a CPU: the space
    holds formats both the executors run here and vLLM runs on the L4 (otherwise every trial fails)."""
    import hardware_db
    from planner.formats import get_format
    from planner.memory.devices import format_support
    from planner.models.resolve import get_model
    from planner.planning.constraints import Constraints
    from search.space import executable_space

    constraints = Constraints(max_memory_gb=16, max_accuracy_loss=5, deployment_target="cloud_inference")
    space = executable_space(get_model(minilm), constraints, "cpu")
    l4 = hardware_db.get("L4")
    formats = [f for f in space.weight_formats if f != "none"]
    assert formats and all(format_support(get_format(f), l4, "vllm").supported is not False for f in formats)
    assert "nf4" not in formats  # bitsandbytes runs here but vLLM does not run it


def test_fitplan_report_rebuilds_the_lab_report_from_its_study(full_lab, tmp_path):
    out = full_lab[0]  # the model is a local directory: its config's name does not resolve offline
    assert main(["report", "--storage", str(out / "lab.db"), "--study", "lab", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "(predicted and measured)" in page and 'id="rounds"' in page and 'class="measured"' in page


def test_a_plan_recommendation_the_executors_cannot_run_is_named_as_predicted_only():
    """A vLLM GPU target on a CPU-only machine: the executable search has nothing feasible, the plan has a
    GPTQ/AWQ strategy; the verdict names it, says it is a prediction and why it cannot be verified here."""
    import planner
    from planner.execution import unexecutable_reason
    from planner.planning.constraints import Constraints
    from search.lab import validate

    class NothingFeasible:  # what validate reads of a SearchResult whose executable search found nothing
        best = None

        @staticmethod
        def nearest_misses():
            return [("bf16 | 0.5 ffn magnitude", "speedup 1.00x < 1.50x")]

    constraints = Constraints(max_memory_gb=16, max_accuracy_loss=5, min_speedup=1.5,
                              deployment_target="cloud_inference")
    plan = planner.plan("meta-llama/Llama-3.1-8B", constraints).as_dict()
    summary = plan["recommended"]["summary"]
    from planner.strategy import CompressionStrategy

    why = unexecutable_reason(CompressionStrategy.model_validate(plan["recommended"]["strategy"]))
    assert why is not None
    verdict = validate(NothingFeasible(), constraints, None, plan)
    assert not verdict.verified and verdict.strategy is None and verdict.predicted_only == summary
    assert f"the plan's `{summary}` does as predicted, but cannot be verified here ({why})" in verdict.reason
    assert verdict.deployment_note.startswith(f"Predicted only: the plan recommends `{summary}`")
    assert "Nearest misses: `bf16 | 0.5 ffn magnitude` (speedup 1.00x < 1.50x)" in verdict.deployment_note
    # without a plan recommendation: nothing is feasible, even as predicted
    assert validate(NothingFeasible(), constraints, None, {"recommended": None}).reason.startswith(
        "no strategy meets every constraint, even as predicted")


def test_unexecutable_reason_names_the_part_the_executors_cannot_apply():
    from planner.execution import unexecutable_reason
    from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec

    def q(**kw):
        return CompressionStrategy(quantization=QuantizationSpec(**kw))

    assert unexecutable_reason(q(weights="nf4")) is None
    assert unexecutable_reason(CompressionStrategy(sparsity=SparsitySpec(level=0.5))) is None
    assert unexecutable_reason(q(weights="awq-int4")).startswith("awq-int4: AWQ needs the autoawq package")
    assert unexecutable_reason(q(weights="nf4", kv_cache="fp8")).startswith("kv_cache 'fp8': the executors do not")
    assert unexecutable_reason(q(weights="dynamic-int8", compute_dtype="fp32"), "cuda") == (
        "the executors do not apply dynamic-int8 on cuda")
    assert unexecutable_reason(q(weights="int8", block_formats=[{"block": 0, "group": "mlp",
                                                                 "format": "gptq-int4"}])).startswith("gptq-int4")

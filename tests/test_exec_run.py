"""``executors.execute`` end to end on MiniLM: in-process and isolated, measured next to predicted, and
failing candidates (crash, timeout, memory cap) that become results while the caller carries on.

Isolated runs cost ~7-9 s each (torch imports in the child): there are four here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.exec

MIB = 2**20


@pytest.fixture(scope="module")
def minilm():
    from executors.fixtures import minilm_dir

    return minilm_dir()


def test_nf4_in_process_matches_the_format_registry_and_keeps_fidelity(minilm, tmp_path):
    from executors import execute
    from planner.strategy import CompressionStrategy, QuantizationSpec

    strategy = CompressionStrategy(quantization=QuantizationSpec(weights="nf4"))
    result = execute(minilm, strategy, isolate=False, out_dir=tmp_path, device="cpu", save=True)
    assert result.ok, result.reason
    assert result.quantized_at_load == "nf4" and result.model_kind == "encoder"
    assert result.params == result.params_baseline == 22_713_216  # logical count, not packed bytes
    # nf4 Linear layers + bf16 rest: exactly the registry's bytes, about a third of float32
    assert result.weight_bytes == pytest.approx(result.prediction.weight_bytes, abs=512)
    assert result.weight_bytes_baseline == 90_852_864
    assert 0.30 < result.weight_bytes / result.weight_bytes_baseline < 0.36
    quality = result.quality
    assert quality.evaluator == "fidelity" and quality.baseline == 1.0
    assert 0.96 < quality.compressed < 0.985  # ENVIRONMENT.md: nf4 + bf16 rest 0.9738
    assert quality.retained_pct == pytest.approx(100 * quality.compressed)
    assert 0 < quality.extras["nn_agreement"] <= 1
    assert [p.name for p in result.phases] == ["load", "evaluate", "speed", "save"]  # in-process: no startup
    assert result.latency.batch_size == 32 and result.latency.tokens_per_s > 0
    # the accuracy model predicts on the evaluator's family (embedding fidelity), with its interval and basis
    prediction = result.prediction
    assert prediction.quality_basis == "prior" and prediction.quality_low_pct <= prediction.quality
    assert prediction.quality <= prediction.quality_high_pct and 50 < prediction.quality < 100
    row = next(c for c in result.comparisons if c.quantity.startswith("quality retained"))
    assert row.unit == "%" and row.measured == pytest.approx(quality.retained_pct)
    # saved with save_pretrained: the safetensors file holds the state dict (transformers packs the 4-bit
    # quantization state a little tighter than the live module: measured 1 % smaller)
    assert result.saved_to and Path(result.saved_to).joinpath("config.json").is_file()
    assert Path(result.saved_to).parent == Path(result.run_dir) == Path(result.result_path).parent
    assert 0.97 < result.weights_file_bytes / result.weight_bytes <= 1.0
    assert result.disk_bytes > result.weights_file_bytes
    saved = json.loads(Path(result.result_path).read_text())
    assert saved["status"] == "ok" and saved["comparisons"]
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1


def test_crashing_candidate_is_a_failed_result(minilm, tmp_path):
    from executors import execute
    from planner.strategy import CompressionStrategy, QuantizationSpec
    from tests.exec_helpers import crash_when_quantized

    strategy = CompressionStrategy(quantization=QuantizationSpec(weights="int8"))
    result = execute(minilm, strategy, evaluator=crash_when_quantized, out_dir=tmp_path, speed=False)
    assert result.status == "failed"
    assert result.reason == "crashed: the process was killed by SIGABRT during phase 'evaluate'"
    assert result.peak_rss_bytes > 200 * MIB  # wait4 still reports the child's peak
    assert result.prediction is not None and result.comparisons == []
    assert json.loads(Path(result.result_path).read_text())["status"] == "failed"


def test_timeout_and_memory_cap_fail_without_killing_the_caller(minilm, tmp_path):
    from executors import execute

    slow = execute(minilm, None, out_dir=tmp_path / "t", timeout_s=1.0, speed=False)
    assert slow.status == "failed" and "timed out after 1 s" in slow.reason
    capped = execute(minilm, None, out_dir=tmp_path / "m", memory_cap_bytes=120 * MIB, speed=False)
    assert capped.status == "failed" and "memory cap exceeded: resident memory passed 120 MiB" in capped.reason


def test_cli_run_minilm_nf4_fidelity_json(minilm, tmp_path, capsys):
    from planner.cli import main

    code = main(["run", str(minilm), "--quant", "nf4", "--eval", "fidelity", "--json", "--out", str(tmp_path)])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["status"] == "ok" and payload["isolated"]
    assert payload["strategy_summary"] == "nf4"
    assert 0.96 < payload["quality"]["compressed"] < 0.985
    rows = {row["quantity"]: row for row in payload["comparisons"]}
    peak = rows["peak RSS (whole run)"]
    # a sanity bound that holds on any machine: the accuracy target (10 %) is benchmarks/executor_memory.py's
    assert peak["measured"] > 300 and abs(peak["error_pct"]) < 50
    assert abs(rows["weights (state dict)"]["error_pct"]) < 0.01
    assert [p["name"] for p in payload["phases"]] == ["startup", "load", "evaluate", "speed"]
    from planner.memory.cpu import cached_machine_profile

    machine = cached_machine_profile()  # measured by the first isolated CPU run here, then cached
    assert machine is not None and machine.startup_bytes > 50 * MIB
    startup = payload["phases"][0]["peak_rss_bytes"]  # the probe imports what a run imports
    assert abs(machine.startup_bytes + machine.bitsandbytes_import_bytes - startup) < 0.25 * startup
    assert payload["environment"]["versions"]["bitsandbytes"]


def test_cli_user_errors(tmp_path, capsys):
    from planner.cli import main

    assert main(["run", str(tmp_path / "nope"), "--quant", "nf4"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--pattern", "heads"]) == 2
    assert "--pattern heads needs --sparsity" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--sparsity", "0.3", "--pattern", "2:4"]) == 2
    assert "removes exactly half" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--compute-dtype", "fp32"]) == 2
    assert "--compute-dtype applies to --quant" in capsys.readouterr().err

"""Fine-tuning through the CLI (estimate / fits / size) and the sizing functions."""

from __future__ import annotations

import json

import pytest

import planner
from planner.cli import main

LLAMA = "meta-llama/Llama-3.1-8B"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_qlora_json_has_the_full_breakdown(capsys):
    code, out, _ = run(capsys, "estimate", LLAMA, "--mode", "qlora", "--batch", "1", "--seq-len", "2048", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["precision"] == "nf4" and payload["mode"] == "qlora"
    memory = payload["memory"]
    for key in ("params_total", "peak_allocated_gib", "device_total_gib", "safe_gib", "breakdown_gib", "assumptions"):
        assert key in memory
    assert {"weights_quantized", "adapters", "optimizer_states", "activations", "logits"} <= set(memory["breakdown_gib"])
    assert memory["training"]["trainable_params"] == 3_407_872


def test_estimate_table_shows_training_lines(capsys):
    code, out, _ = run(capsys, "estimate", LLAMA, "--mode", "full", "--seq-len", "1024", "--gpus", "8",
                       "--sharding", "zero3", "--offload", "optimizer", "--gpu", "H100 SXM", "--training-tokens", "1e9")
    assert code == 0
    assert "trainable parameters: 8,030,261,248" in out and "host RAM (offload)" in out and "GPU-hours" in out


@pytest.mark.parametrize("argv,message", [
    (["--mode", "qlora", "--precision", "bf16"], "not 4-bit"),
    (["--mode", "lora", "--lora-rank", "0"], "rank"),
    (["--mode", "lora", "--lora-targets", "query,value"], "q_proj"),
    (["--mode", "lora", "--optimizer", "adamm"], "Did you mean"),
    (["--mode", "full", "--gpus", "4"], "data-parallel"),
    (["--lora-rank", "16"], "--mode"),
])
def test_bad_training_flags_exit_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, "estimate", LLAMA, "--seq-len", "512", *argv)
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_fits_qlora_on_a_4090(capsys):
    code, out, _ = run(capsys, "fits", "--gpu", "RTX 4090", "--mode", "qlora", "--model", LLAMA,
                       "--model", "meta-llama/Llama-3.1-70B", "--json")
    assert code == 0
    rows = {(r["model"], r["precision"]): r for r in json.loads(out)}
    assert rows[(LLAMA, "nf4")]["fits"] is True and rows[(LLAMA, "nf4")]["max_seq_len"] > 4096
    assert rows[("meta-llama/Llama-3.1-70B", "nf4")]["fits"] is False


def test_what_fits_training_columns_and_support():
    frame = planner.what_fits(["NVIDIA V100 SXM2 32GB", "RTX 4090"], [LLAMA], mode="lora", seq_len=1024)
    by_gpu = {row.gpu: row for row in frame.itertuples()}
    assert by_gpu["NVIDIA V100 SXM2 32GB"].supported is False and "fp16-mixed" in by_gpu["NVIDIA V100 SXM2 32GB"].note
    assert by_gpu["NVIDIA GeForce RTX 4090"].supported is True and by_gpu["NVIDIA GeForce RTX 4090"].train_tok_s > 0


def test_size_cluster_full_needs_fewer_big_gpus_and_reports_cost():
    frame = planner.size_cluster("meta-llama/Llama-3.1-70B", mode="full", seq_len=2048, grad_checkpointing="full",
                                 gpus=["H100 SXM", "NVIDIA A100 40GB SXM"], training_tokens=1e9)
    rows = {row.gpu: row for row in frame.itertuples()}
    h100, a100 = rows["NVIDIA H100 SXM"], rows["NVIDIA A100 40GB SXM"]
    assert 1 < h100.gpus < a100.gpus
    assert h100.per_gpu_safe_gib <= 80 and h100.hours > 0 and h100.usd_total > 0
    # one GPU fewer would not fit
    fewer = planner.estimate_memory("meta-llama/Llama-3.1-70B", mode="full", seq_len=2048, grad_checkpointing="full",
                                    gpus=int(h100.gpus) - 1, sharding="zero3")
    assert fewer.safe_gib > h100.usable_gib


def test_size_cli_full(capsys):
    code, out, _ = run(capsys, "size", "meta-llama/Llama-3.1-70B", "--mode", "full", "--seq-len", "2048",
                       "--gpu", "H100 SXM", "--json")
    assert code == 0 and json.loads(out)[0]["sharding"] == "zero3"

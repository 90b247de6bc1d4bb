"""`fitplan estimate`, `fits` and `size`, in-process: outputs, --json, --explain, one-line errors."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys

import pytest

from planner.cli import _options, main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_has_the_documented_keys(capsys):
    code, out, err = run(capsys, "estimate", "meta-llama/Llama-3.1-8B", "--precision", "nf4", "--seq-len", "8192",
                         "--json")
    assert code == 0 and err == ""
    payload = json.loads(out)["memory"]
    for key in ("params_total", "peak_allocated_gib", "device_total_gib", "safe_gib", "breakdown_gib", "assumptions",
                "terms"):
        assert key in payload
    assert payload["params_total"] == 8_030_261_248
    assert payload["assumptions"]["kv_dtype"] == "bf16"


def test_estimate_with_gpu_prints_fit_and_speed(capsys):
    code, out, _ = run(capsys, "estimate", "Qwen/Qwen3-8B", "--prompt-len", "1000", "--new-tokens", "500",
                       "--gpu", "RTX 4090")
    assert code == 0
    assert "NVIDIA GeForce RTX 4090: fits" in out and "decode" in out and "tok/s" in out
    code, out, _ = run(capsys, "estimate", "Qwen/Qwen3-8B", "--seq-len", "4096", "--gpu", "RTX 4090", "--json")
    assert json.loads(out)["speed"]["decode_tokens_per_s"] > 0


def test_estimate_explain_prints_formulas_and_sources(capsys):
    code, out, _ = run(capsys, "estimate", "meta-llama/Llama-3.1-8B", "--seq-len", "2048", "--explain")
    assert code == 0
    assert "page_size_bytes" in out  # the KV-cache source
    assert "assumptions:" in out and "formula" in out


@pytest.mark.parametrize(("argv", "fragment"), [
    (["estimate", "meta-llama/Llama-3.1-8B", "--precision", "int4"], "ambiguous"),
    (["estimate", "meta-llama/Llama-3.1-8B", "--precision", "bf61"], "Did you mean"),
    (["estimate", "meta-llama/Llama-3.1-8B", "--batch", "0"], "batch must be at least 1"),
    (["estimate", "meta-llama/Llama-3.1-8B", "--precision", "fp8", "--engine", "vllm", "--gpu", "A100 80GB"],
     "compute capability"),
    (["estimate", "no-such-model-q", "--seq-len", "10"], "unknown model"),
    (["estimate", "meta-llama/Llama-3.1-8B", "--gpu", "RTX 9999"], "unknown accelerator"),
    (["fits", "--gpu=-16GB"], "positive"),
    (["fits", "--gpu", "16GB", "--context", "0"], "context must be at least 1"),
    (["size", "meta-llama/Llama-3.1-8B", "--precision", "q4_k_m"], "llamacpp"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("fitplan: error: ") and fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_fits_table_lists_fitting_models(capsys):
    code, out, _ = run(capsys, "fits", "--gpu", "16GB", "--model", "meta-llama/Llama-3.1-8B", "--model",
                       "meta-llama/Llama-3.1-70B")
    assert code == 0
    assert "1 of 2 models fit" in out and "Llama-3.1-8B" in out and "capacity-only" in out


def test_fits_table_shows_the_most_precise_fitting_format_per_model(capsys):
    code, out, _ = run(capsys, "fits", "--gpu", "RTX 4090", "--json")
    assert code == 0
    fitting: dict[str, list[dict]] = {}
    rows = json.loads(out)
    for row in rows:
        if row["fits"]:
            fitting.setdefault(row["model"], []).append(row)
    bits = {"bf16": 16, "fp16": 16, "fp8-block": 8, "int8": 8, "nf4": 4, "nf4-dq": 4, "gptq-int4": 4, "awq-int4": 4}
    expected = {model: max(rows, key=lambda r: (bits[r["precision"]], r["safe_gib"]))["precision"]
                for model, rows in fitting.items()}
    code, out, _ = run(capsys, "fits", "--gpu", "RTX 4090")
    assert code == 0 and f"{len(expected)} of {len({r['model'] for r in rows})} models fit" in out
    shown = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] and cells[0] != "model":
            shown[cells[0]] = cells[2]
    assert shown == expected
    big = max(expected, key=lambda m: fitting[m][0]["params_b"])
    assert out.index(big) < min(out.index(m) for m in expected if m != big)  # largest model first


def test_tables_from_numpy_columns_print_like_dataframes(capsys):
    import numpy as np
    import pandas as pd

    from planner.render import print_columns, print_frame

    columns = {"name": np.array(["a [b]", "c"], dtype=object), "count": np.array([1200, 3]),
               "share": np.array([0.25, np.nan]), "ok": np.array([True, False])}
    print_frame(pd.DataFrame(columns), "table", title="t", formats={"share": "{:.0%}"})
    from_frame = capsys.readouterr().out
    print_columns(columns, title="t", formats={"share": "{:.0%}"})
    assert capsys.readouterr().out == from_frame
    assert "a [b]" in from_frame and "1,200" in from_frame and "25%" in from_frame and "-" in from_frame


def test_fits_csv_has_every_row(capsys):
    code, out, _ = run(capsys, "fits", "--gpu", "RTX 4090", "--model", "meta-llama/Llama-3.1-8B", "--precision",
                       "bf16", "--precision", "nf4", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["precision"] for r in rows] == ["bf16", "nf4"]
    assert all(r["fits"] == "True" for r in rows)


def test_size_prints_gpu_counts_and_costs(capsys):
    code, out, _ = run(capsys, "size", "meta-llama/Llama-3.1-70B", "--precision", "bf16", "--seq-len", "32768",
                       "--json")
    assert code == 0
    rows = {r["gpu"]: r for r in json.loads(out)}
    assert rows["NVIDIA H100 SXM"]["gpus"] == 2 and rows["NVIDIA H100 SXM"]["usd_per_hour"] > 0
    code, out, _ = run(capsys, "size", "meta-llama/Llama-3.1-70B", "--seq-len", "32768", "--gpu", "H100 SXM")
    assert code == 0 and "NVIDIA H100 SXM" in out


def test_flag_hooks_extend_the_parsers(capsys, monkeypatch):
    seen = {}

    def add(parser: argparse.ArgumentParser, command: str) -> None:
        if command == "estimate":
            parser.add_argument("--note-for-test")

    def collect(args: argparse.Namespace, command: str) -> dict:
        seen[command] = getattr(args, "note_for_test", None)
        return {}

    monkeypatch.setattr(_options, "FLAG_HOOKS", [add])
    monkeypatch.setattr(_options, "KWARG_HOOKS", [collect])
    code, _, _ = run(capsys, "estimate", "gpt2", "--seq-len", "16", "--note-for-test", "x", "--json")
    assert code == 0 and seen == {"estimate": "x"}


def test_sizing_commands_do_not_load_torch():
    code = ("import sys; from planner.cli import main; main(['fits', '--gpu', '16GB', '--model', 'gpt2', '--json']); "
            "main(['estimate', 'gpt2', '--seq-len', '64', '--gpu', 'RTX 4090', '--json']); "
            "heavy = [m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules]; "
            "sys.stderr.write('HEAVY=' + ','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.strip().splitlines()[-1] == "HEAVY="


def test_console_script_runs_sizing_commands_quickly():
    """Quick commands run without the cyclic GC (frozen at exit) and with one OpenBLAS thread."""
    code = ("import gc, os, sys; sys.argv = ['fitplan', 'fits', '--gpu', '16GB', '--model', 'gpt2']; "
            "from planner.cli import console_main; status = console_main(); "
            "sys.stderr.write(f'STATUS={status} GC={gc.isenabled()} FROZEN={gc.get_freeze_count() > 0} '"
            "f'BLAS={os.environ.get(\"OPENBLAS_NUM_THREADS\")}')")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stderr.strip().splitlines()[-1] == "STATUS=0 GC=False FROZEN=True BLAS=1"
    assert "1 of 1 models fit" in result.stdout

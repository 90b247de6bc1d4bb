"""`fitplan hardware list` / `show`: tables, --json, --csv, --hardware-file and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from planner.cli import main

ACME = """schema_version = 1

[[accelerator]]
name = "Acme X1"
vendor = "Acme"
architecture = "Acme Gen1"
memory_gb = 32
memory_usable_gib = 30
memory_usable_basis = "measured"
memory_kind = "dedicated"
supports_bf16 = false
supports_fp8 = false
supports_fp4 = false
supports_sparse_2_4 = false
gpus_per_node = 2
source = "Acme datasheet"
verified = true
"""


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_table_has_the_summary_columns(capsys):
    code, out, err = run(capsys, "hardware", "list")
    assert code == 0 and err == ""
    for header in ("name", "memory GB", "usable GiB", "bandwidth GB/s", "bf16 TFLOPS", "fp8 TFLOPS", "$/h", "launch $"):
        assert header in out
    assert "NVIDIA GeForce RTX 4090" in out and "Accelerators (75)" in out


def test_list_json_has_every_field(capsys):
    code, out, _ = run(capsys, "hardware", "list", "--vendor", "nvidia", "--min-memory-gb", "141", "--json")
    assert code == 0
    records = json.loads(out)
    assert records and all(r["vendor"] == "NVIDIA" and r["memory_gb"] >= 141 for r in records)
    h200 = next(r for r in records if r["name"] == "NVIDIA H200 SXM")
    assert h200["memory_usable_gib"] == 141 and h200["bf16_tflops"] == 989 and h200["release_year"] == 2024
    assert h200["launch_price_usd"] is None


def test_list_csv_parses_back(capsys):
    code, out, _ = run(capsys, "hardware", "list", "--vendor", "Google", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4
    v5e = next(r for r in rows if r["name"] == "Google TPU v5e (per chip)")
    assert v5e["bf16_tflops"] == "197.0" and v5e["release_year"] == "2023" and v5e["fp8_tflops"] == ""
    assert "TPU v5e" in v5e["aliases"].split(";")


def test_show_prints_every_field_and_the_unknown_ones(capsys):
    code, out, _ = run(capsys, "hardware", "show", "rtx 4090")
    assert code == 0
    assert "NVIDIA GeForce RTX 4090" in out and "330.3" in out and "2022" in out
    assert "[tgarg01/silybench-data" in out  # brackets are text, not rich markup
    assert out.strip().splitlines()[-1] == "unknown: none"  # fp4 is unsupported on Ada, not unknown
    code, out, _ = run(capsys, "hardware", "show", "A10G")
    assert out.strip().splitlines()[-1] == "unknown: tf32_tflops, tdp_w, launch_price_usd"


def test_show_json_adds_missing_fields(capsys):
    code, out, _ = run(capsys, "hardware", "show", "L40S", "--json")
    data = json.loads(out)
    assert code == 0 and data["memory_usable_gib"] == 46068 / 1024
    assert data["missing_fields"] == ["launch_price_usd"]


def test_show_capacity_string(capsys):
    code, out, _ = run(capsys, "hardware", "show", "24GB", "--json")
    data = json.loads(out)
    assert code == 0 and data["is_generic"] and data["memory_usable_gib"] == 24
    assert "memory_bandwidth_gbps" in data["missing_fields"]


@pytest.mark.parametrize("argv, needle", [
    (["hardware", "show", "rtx 4099"], "Did you mean 'RTX 4090'"),
    (["hardware", "show", "A100"], "matches 4 accelerators"),
    (["hardware", "show", "0GB"], "must be positive"),
    (["hardware", "list", "--vendor", "nvidea"], "Did you mean 'NVIDIA'"),
])
def test_errors_are_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("fitplan: error: ") and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_hardware_file_adds_an_entry(capsys, tmp_path):
    path = tmp_path / "acme.toml"
    path.write_text(ACME, encoding="utf-8")
    code, out, _ = run(capsys, "--hardware-file", str(path), "hardware", "show", "acme x1", "--json")
    assert code == 0 and json.loads(out)["gpus_per_node"] == 2


def test_malformed_hardware_file_names_file_entry_and_field(capsys, tmp_path):
    path = tmp_path / "acme.toml"
    path.write_text(ACME.replace("memory_gb = 32", 'memory_gb = "lots"'), encoding="utf-8")
    code, _, err = run(capsys, "--hardware-file", str(path), "hardware", "list")
    assert code == 2 and "Traceback" not in err
    assert f"{path}: accelerator #1 ('Acme X1'): field 'memory_gb': Input should be a valid number" in err


def test_missing_hardware_file(capsys, tmp_path):
    code, _, err = run(capsys, "--hardware-file", str(tmp_path / "nope.toml"), "hardware", "list")
    assert code == 2 and "hardware file not found" in err and "nope.toml" in err


def test_subprocess_unknown_name_exits_2_with_suggestion():
    result = subprocess.run([sys.executable, "-m", "planner.cli", "hardware", "show", "rtx 4099"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "RTX 4090" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""

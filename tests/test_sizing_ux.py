"""The sizing answers as users meet them: their hardware (--gpus, --ram offload, --users, sharding
support) and tables that fit the terminal (COLUMNS=80), with one-line errors for bad flag values."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from planner.cli import main

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
LLAMA70 = "meta-llama/Llama-2-70b-hf"


def run(capsys, monkeypatch, *argv, columns=80):
    monkeypatch.setenv("COLUMNS", str(columns))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    """Cells of the body rows of every rich table in ``out``."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│")]


def headers(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("┃").split("┃")] for line in out.splitlines() if line.startswith("┃")]


# --- output that fits the terminal -------------------------------------------------------------------

def test_fits_piped_respects_columns_80_and_keeps_the_answer():
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "planner.cli", "fits", "--gpu", "16GB"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    head = headers(done.stdout)[0]
    assert head[:2] == ["model", "precision"]
    rows = table_rows(done.stdout)
    fitting = int(re.search(r"(\d+) of \d+ models fit", done.stdout).group(1))
    assert len(rows) == fitting  # one line per model
    assert all(row[1] and not row[1].endswith("…") for row in rows)  # the precision, whole, on every row
    assert re.search(r"^\d+ of \d+ did not fit: ", done.stdout, re.MULTILINE)


def test_wide_terminal_shows_more_columns_than_narrow(capsys, monkeypatch):
    _, narrow, _ = run(capsys, monkeypatch, "fits", "--gpu", "RTX 4090", columns=80)
    _, wide, _ = run(capsys, monkeypatch, "fits", "--gpu", "RTX 4090", columns=200)
    assert len(headers(wide)[0]) > len(headers(narrow)[0])
    assert {"params", "also fits"} <= set(headers(wide)[0])
    assert max(len(line) for line in wide.splitlines()) <= 200


def test_size_at_80_columns_shows_gpus_tp_pp_one_line_per_row(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "size", "meta-llama/Llama-3.1-70B")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert {"gpu", "gpus", "tp", "pp"} <= set(headers(out)[0])
    import hardware_db

    catalog = len([a for a in hardware_db.list() if not a.is_generic])
    assert len(table_rows(out)) == catalog  # no row wrapped over several lines


def test_layout_drops_in_order_and_never_the_answer():
    from planner.render import Layout, fit_to_width, table_width

    headers_ = ["model", "precision", "a", "b", "note"]
    cells = [["m" * 30, "gguf-q4_k_m", "1" * 10, "2" * 10, "x" * 60]]
    layout = Layout(steps=(("shrink", "note"), ("drop", "a"), ("drop", "b"), ("shrink", "model")), min_width=8)
    kept = fit_to_width(headers_, cells, 80, layout)
    assert 1 in kept and kept[1] == len("gguf-q4_k_m")  # precision: not in any step, whole
    assert table_width(list(kept.values())) <= 80
    assert 2 not in kept or 3 in kept  # 'a' goes before 'b'
    roomy = fit_to_width(headers_, cells, 300, layout)
    assert roomy == {0: 30, 1: 11, 2: 10, 3: 10, 4: 60}


# --- sort, top, filter ------------------------------------------------------------------------------

def test_sort_top_filter(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "fits", "--gpu", "RTX 4090", "--filter", "qwen", "--sort", "name",
                       "--top", "3", columns=200)
    assert code == 0
    names = [row[0] for row in table_rows(out)]
    assert len(names) == 3 and all("qwen" in n.lower() for n in names)
    assert names == sorted(names, key=str.lower)
    code, out, _ = run(capsys, monkeypatch, "fits", "--gpu", "RTX 4090", "--filter", "params>=7", "--sort", "speed",
                       columns=200)
    head = headers(out)[0]
    rows = table_rows(out)
    params = [float(r[head.index("params")].rstrip("B")) for r in rows]
    speeds = [float(r[head.index("tok/s")].replace(",", "")) for r in rows]
    assert rows and min(params) >= 7 and speeds == sorted(speeds, reverse=True)


# --- the user's hardware ------------------------------------------------------------------------------

def test_gpus_split_matches_estimate_and_lowers_per_gpu_memory():
    from planner.estimate import estimate
    from planner.sizing import what_fits

    one = what_fits("RTX 4090", [LLAMA70], ["awq-int4"], context=4096)
    two = what_fits("RTX 4090", [LLAMA70], ["awq-int4"], context=4096, gpus=2)
    assert not one["fits"].iloc[0] and two["fits"].iloc[0]
    ref = estimate(LLAMA70, "awq-int4", gpu="RTX 4090", gpus=2, seq_len=4096)
    assert two["safe_gib"].iloc[0] == pytest.approx(ref.memory.safe_gib, rel=0.01)
    assert two["decode_tok_s"].iloc[0] == pytest.approx(ref.speed.decode_tokens_per_s, rel=1e-6)
    tp = what_fits("RTX 4090", [LLAMA70], ["awq-int4"], context=4096, engine="vllm", gpus=4)
    ref = estimate(LLAMA70, "awq-int4", gpu="RTX 4090", gpus=4, seq_len=4096, engine="vllm")
    assert tp["safe_gib"].iloc[0] == pytest.approx(ref.memory.safe_gib, rel=0.01)


def test_offload_memory_split_adds_up_and_speeds_are_ordered():
    from planner.sizing.offload import _split, host_links
    from planner.sizing.table import GIB, _cached_table
    from planner.memory.devices import resolve_gpu

    acc = resolve_gpu("RTX 4090")
    table = _cached_table((MIXTRAL,), ("gguf-q4_k_m",), "llamacpp", None, 4096, 1)
    links = host_links(acc, "128GB")
    usable = acc.memory_usable_gib * GIB
    modes = {m: _split(m, table, 0, acc, 1, usable, links, 1, 4096) for m in ("ngl", "moe-cpu", "cpu-only")}
    safe = float(table.safe_bytes(1, 4096)[0]) / GIB
    ngl = modes["ngl"]
    assert 0 < ngl.gpu_layers < ngl.layers and ngl.gpu_gib <= acc.memory_usable_gib
    assert ngl.gpu_gib + ngl.host_gib == pytest.approx(safe, rel=1e-9)  # every byte is on one side
    assert modes["moe-cpu"].gpu_gib + modes["moe-cpu"].host_gib == pytest.approx(safe, rel=1e-9)
    assert modes["cpu-only"].gpu_gib == 0 and modes["cpu-only"].host_gib == pytest.approx(safe)
    # More of the model on the GPU is faster; all of it in RAM is slowest.
    assert ngl.decode_tok_s > modes["cpu-only"].decode_tok_s
    assert modes["moe-cpu"].decode_tok_s > modes["cpu-only"].decode_tok_s
    # The RAM part is bound by the host bandwidth: twice the bandwidth halves it.
    fast = _split("cpu-only", table, 0, acc, 1, usable, host_links(acc, "128GB", 2 * links.host_bandwidth_gbps), 1, 4096)
    assert fast.decode_tok_s == pytest.approx(2 * modes["cpu-only"].decode_tok_s)
    # accelerate device_map streams the RAM layers over PCIe every step: slower than llama.cpp -ngl.
    hf = _cached_table((MIXTRAL,), ("bf16",), "hf", None, 4096, 1)
    device_map = _split("device-map", hf, 0, acc, 1, usable, links, 1, 4096)
    assert device_map.bound_by.startswith("PCIe") and device_map.decode_tok_s < ngl.decode_tok_s


def test_offload_modes_fit_ram_and_gpu_and_moe_only_for_moe():
    from planner.sizing.offload import offload_modes

    modes = offload_modes("RTX 4090", "64GB", [MIXTRAL, LLAMA70])
    assert {m.mode for m in modes if m.model == MIXTRAL} >= {"ngl", "moe-cpu", "cpu-only"}
    assert "moe-cpu" not in {m.mode for m in modes if m.model == LLAMA70}
    for m in modes:
        assert m.fits and m.gpu_gib <= 24.0 and m.host_gib <= 60.0 and m.decode_tok_s > 0
    speeds = [m.decode_tok_s for m in modes if m.model == MIXTRAL]
    assert speeds == sorted(speeds, reverse=True)
    # a capacity-only GPU: the speed is an upper bound (the RAM part alone), flagged
    generic = offload_modes("16GB", "32GB", [LLAMA70])
    assert generic and all(m.speed_upper_bound for m in generic if m.mode != "cpu-only")
    assert offload_modes("16GB", 8, [LLAMA70]) == []  # nothing fits in 4 usable GiB of RAM


def test_fits_ram_lists_offload_modes_with_speeds_at_80_columns(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "fits", "--gpu", "16GB", "--ram", "32GB")
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "run modes" in out and "tok/s <=" in out
    offload = table_rows(out.split("run modes", 1)[1])
    assert {"ngl", "cpu-only", "moe-cpu"} <= {row[1] for row in offload}
    code, out, _ = run(capsys, monkeypatch, "fits", "--gpu", "RTX 4090", "--ram", "64GB", "--model", MIXTRAL, "--json")
    payload = json.loads(out)
    assert payload["offload"] and payload["offload"][0]["decode_tok_s"] > 0 and "fits" in payload


def test_estimate_ram_prints_modes_when_it_does_not_fit(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "estimate", MIXTRAL, "--gpu", "RTX 4090", "--ram", "64GB")
    assert code == 0 and "run modes" in out and "-ngl" in out


def test_users_sizes_concurrent_sessions(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "fits", "--gpu", "H100 SXM", "--engine", "vllm", "--context", "8192",
                       "--users", "16", "--model", "meta-llama/Llama-3.1-8B", columns=200)
    assert code == 0 and "16 users" in out
    head, row = headers(out)[0], table_rows(out)[0]
    assert int(row[head.index("sessions")].replace(",", "")) >= 16


def test_fine_tuning_size_marks_chips_without_sharding_support():
    from planner.sizing import size_cluster

    frame = size_cluster("meta-llama/Llama-3.1-8B", mode="full")
    apple = frame["gpu"].str.startswith("Apple")
    assert apple.any() and not frame.loc[apple, "supported"].any()
    assert frame.loc[apple, "note"].str.contains("cannot run zero3").all()
    runs = frame.index[frame["supported"].astype(bool)]
    assert runs.max() < frame.index[apple].min()  # every chip that runs it comes first
    assert frame.iloc[0]["gpu"].split()[0] in {"NVIDIA", "AMD", "Intel", "Google"}


def test_size_gpus_caps_the_count():
    from planner.sizing import size_cluster

    frame = size_cluster(LLAMA70, "bf16", gpus=["RTX 4090", "H100 SXM"], max_gpus=2)
    row = frame.set_index("gpu").loc["NVIDIA GeForce RTX 4090"]
    assert row["gpus"] != row["gpus"] and "more than --gpus 2" in row["note"]  # NaN: needs more
    assert frame.set_index("gpu").loc["NVIDIA H100 SXM", "gpus"] == 2


def test_not_fitting_summary():
    from planner.sizing.fits import fit_columns
    from planner.sizing.summary import not_fitting

    fitted = fit_columns("RTX 4090", [LLAMA70, "Qwen/Qwen3-8B"])
    summary = not_fitting({name: fitted.column(name) for name in fitted.data})
    assert summary.models == 2 and summary.fitting == 1
    assert [t.model for t in summary.too_large] == [LLAMA70] and summary.too_large[0].smallest_gib > 24
    assert summary.line().startswith("1 of 2 did not fit: 1 too large")


# --- bad values of the new flags: one line, exit 2 ------------------------------------------------------

@pytest.mark.parametrize(("argv", "flag"), [
    (["fits", "--gpu", "16GB", "--gpus", "0"], "--gpus"),
    (["fits", "--gpu", "16GB", "--gpus", "two"], "--gpus"),
    (["fits", "--gpu", "16GB", "--ram=-5GB"], "--ram"),
    (["fits", "--gpu", "16GB", "--ram", "lots"], "--ram"),
    (["fits", "--gpu", "16GB", "--ram", "nan"], "--ram"),
    (["fits", "--gpu", "16GB", "--ram", "32GB", "--host-bandwidth", "inf"], "--host-bandwidth"),
    (["fits", "--gpu", "16GB", "--host-bandwidth", "50"], "--host-bandwidth"),
    (["fits", "--gpu", "16GB", "--users", "0"], "--users"),
    (["fits", "--gpu", "16GB", "--users", "4", "--batch", "2"], "--users"),
    (["fits", "--gpu", "16GB", "--top", "x"], "--top"),
    (["fits", "--gpu", "16GB", "--sort", "spede"], "'speed'"),
    (["fits", "--gpu", "16GB", "--filter", "parms>3"], "'params'"),
    (["fits", "--gpu", "16GB", "--filter", "params>>3"], "--filter"),
    (["size", LLAMA70, "--gpus", "-1"], "--gpus"),
    (["estimate", LLAMA70, "--gpu", "RTX 4090", "--ram", "0GB"], "--ram"),
    (["estimate", LLAMA70, "--ram", "32GB"], "--gpu"),
])
def test_bad_values_of_new_flags_one_line_exit_2(capsys, monkeypatch, argv, flag):
    code, out, err = run(capsys, monkeypatch, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert flag in err

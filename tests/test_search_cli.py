"""``fitplan search`` and ``fitplan results``: files written, 80-column output, resumption, mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import main

ROOT = Path(__file__).resolve().parents[1]
LLAMA = "meta-llama/Llama-3.1-8B"
BASE = [LLAMA, "--max-memory-gb", "16", "--max-accuracy-loss", "5", "--gpu", "RTX 4090", "--sampler", "random",
        "--seed", "0", "--no-progress"]


def test_search_writes_table_and_plots_and_results_rebuilds_them(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'fitplan.db'}"
    status = main(["search", *BASE, "--trials", "25", "--storage", storage, "--study", "cli", "--out",
                   str(tmp_path / "out")])
    assert status == 0
    printed = capsys.readouterr().out
    assert ("recommended:" in printed or "no feasible strategy; closest:" in printed) and "wrote html" in printed
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"table.csv", "table.json", "table.md", "pareto.png", "pareto.html"} <= names
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert table["trials"] == 25 and table["table"][0]["rank"] == 1
    status = main(["results", "--storage", storage, "--study", "cli", "--json"])
    assert status == 0
    again = json.loads(capsys.readouterr().out)
    assert again["table"] == table["table"]


def test_search_output_fits_80_columns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    command = [sys.executable, "-m", "planner.cli", "search", *BASE, "--trials", "15", "--storage",
               f"sqlite:///{tmp_path / 'f.db'}", "--out", str(tmp_path / "o")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = [line for line in lines if line.startswith(("│", "┃", "┏", "└"))]
    assert table and max(len(line) for line in table) <= 80
    assert any("recommended" in line or "no feasible" in line for line in lines)


@pytest.mark.parametrize("argv, message", [
    (["search", *BASE, "--sampler", "nsga3"], "unknown sampler 'nsga3'"),
    (["search", *BASE, "--objectives", "quality_loss,latncy"], "unknown objective 'latncy'"),
    (["search", *BASE, "--trials", "0"], "--trials must be between 1"),
    (["search", *BASE, "--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot reach the study storage"),
    (["results", "--storage", "sqlite:///{tmp}/none.db", "--study", "nope"], "no such SQLite file"),
    (["report", "--storage", "{tmp}/none.db", "--study", "nope", "--out", "{tmp}/r"], "no such SQLite file"),
])
def test_mistakes_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "search":
        argv += ["--out", str(tmp_path / "o"), "--storage" if "--storage" not in argv else "--study",
                 f"sqlite:///{tmp_path / 's.db'}" if "--storage" not in argv else "s"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_out_that_is_a_file_is_refused_before_any_trial(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["search", *BASE, "--trials", "5", "--storage", storage, "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    import optuna

    assert optuna.get_all_study_summaries(storage) == [] if (tmp_path / "s.db").exists() else True

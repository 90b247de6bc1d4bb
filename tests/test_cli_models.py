"""`fitplan models list/show`: tables, JSON, CSV and error exits."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from planner.cli import main


def test_show_json_gives_the_exact_total(capsys):
    assert main(["models", "show", "meta-llama/Llama-3.1-8B", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["params_total"] == 8_030_261_248
    assert payload["params"]["lm_head"] == 525_336_576
    assert any(g["name"] == "layers.*.self_attn.q_proj" and g["count"] == 32 for g in payload["param_groups"])


def test_show_table_lists_components(capsys):
    assert main(["models", "show", "Mixtral-8x7B"]) == 0
    out = capsys.readouterr().out
    assert "46,702,792,704" in out and "active per token" in out and "8 experts, top-2" in out


def test_list_csv_and_json(capsys):
    assert main(["models", "list", "--csv"]) == 0
    csv_text = capsys.readouterr().out
    import pandas as pd

    frame = pd.read_csv(io.StringIO(csv_text))
    assert len(frame) >= 40 and {"name", "params_b", "kv_heads"} <= set(frame.columns)
    assert main(["models", "list", "--family", "qwen", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["family"] == "qwen" for r in rows)


def test_unknown_model_exits_2_with_suggestion(capsys):
    assert main(["models", "show", "lama-3.1-8B"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fitplan: error: unknown model") and "meta-llama/Llama-3.1-8B" in err


def test_unknown_family_exits_2(capsys):
    assert main(["models", "list", "--family", "lama"]) == 2
    assert "Did you mean 'llama'" in capsys.readouterr().err


def test_console_script_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "planner.cli", "models", "show", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "has no config.json" in result.stderr

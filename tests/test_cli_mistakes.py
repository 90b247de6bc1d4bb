"""Command-line mistakes argparse catches: one line naming what was typed and the closest valid flag or
choice, exit code 2 (planner.cli.parser.FitplanParser); model directories without weights (every command
that loads one, planner.models.directory)."""

from __future__ import annotations

import pytest

from planner.cli import main


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, no usage block, no traceback
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["fits", "--gpu", "16GB", "--topp", "3"],
     "fitplan fits: error: --topp is not a flag of this command (did you mean --top?)"),
    (["plan", "meta-llama/Llama-3.1-8B", "--gpu", "RTX 4090", "--max-acuracy-loss", "3"],
     "fitplan plan: error: --max-acuracy-loss is not a flag of this command (did you mean --max-accuracy-loss?)"),
    (["fits", "--gpu", "16GB", "--engine", "vlm"],
     "fitplan fits: error: --engine 'vlm' is not one of hf, vllm, llamacpp, litgpt (did you mean 'vllm'?)"),
    (["fitz", "--gpu", "16GB"], "(did you mean 'fits'?)"),
    (["fits", "--gpuu", "16GB"],
     "fitplan fits: error: the following arguments are required: --gpu (you typed --gpuu: did you mean --gpu?)"),
    (["fits", "--gpu", "16GB", "--xyzzy"], "fitplan fits: error: --xyzzy is not a flag of this command."),
    (["fixtures", "--xyzzy"], "fitplan fixtures: error: the following arguments are required: ACTION (--xyzzy: not "
                              "a flag of this command)."),
])
def test_a_misspelt_flag_or_choice_gets_one_line_with_the_closest_match(capsys, argv, expected):
    line = _error(capsys, argv)
    assert expected in line and line.endswith("for the flags.")


def test_plugin_commands_get_the_same_one_line_errors(capsys):
    line = _error(capsys, ["lab", "some/dir", "--max-memory-gb", "1", "--eval", "perplexty"])
    assert line.startswith("fitplan lab: error: --eval 'perplexty' is not one of") and "'perplexity'?" in line


@pytest.mark.parametrize("command", [["profile"], ["run", "--quant", "int8"], ["lab", "--max-memory-gb", "1"]])
def test_a_model_directory_without_weights_is_refused_before_any_work(tmp_path, capsys, command):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    code = main([command[0], str(tmp_path), *command[1:]])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fitplan: error: MODEL_DIR '{tmp_path}' has a config.json but no weights (*.safetensors or "
                   "pytorch_model*.bin); save the model with save_pretrained first.")

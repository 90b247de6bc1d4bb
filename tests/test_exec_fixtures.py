"""``fitplan fixtures build``: recipes and their directories, progress with an ETA on stderr (also with
--json, whose stdout stays pure JSON), and clear errors for bad flags."""

from __future__ import annotations

import io
import json

import pytest

from executors.fixtures import QUALITY_RECIPE, TEST_RECIPE, BuildProgress, TrainingRecipe, fixture_dir


def test_each_recipe_has_its_own_directory(tmp_path):
    assert fixture_dir(QUALITY_RECIPE, tmp_path).name == "tiny-llama-v1"
    assert fixture_dir(TEST_RECIPE, tmp_path).name == "tiny-llama-v1-test"
    assert fixture_dir(150, tmp_path).name == "tiny-llama-v1-steps150"
    custom = fixture_dir(TrainingRecipe(steps=150, seq_len=32), tmp_path).name
    assert custom.startswith("tiny-llama-v1-") and custom not in ("tiny-llama-v1-steps150", "tiny-llama-v1-test")
    # the test fixture trains on far fewer tokens than the benchmark one
    tokens = lambda r: r.steps * r.batch_size * r.seq_len  # noqa: E731
    assert tokens(TEST_RECIPE) * 10 < tokens(QUALITY_RECIPE)


def test_progress_reports_steps_with_an_eta(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("executors.fixtures.time.monotonic", lambda: now[0])
    stream = io.StringIO()
    progress = BuildProgress(stream, every_s=5.0)
    progress.phase("training")  # printed at 0, training starts at 0
    now[0] = 10.0
    progress.step(1, 4, 5.0)  # first step always shown, 10 s per step -> ETA 30 s
    now[0] = 10.5
    progress.step(2, 4, 4.0)  # less than 5 s since the last line: not shown
    now[0] = 20.0
    progress.step(3, 4, 3.5)  # shown, ETA 20/3 ~ 7 s
    lines = stream.getvalue().splitlines()
    assert lines[0] == "fixture [0:00] training"
    assert lines[1].endswith("step 1/4 (25%)  loss 5.000  elapsed 0:10  ETA 0:30")
    assert "step 3/4 (75%)" in lines[2] and lines[2].endswith("ETA 0:07") and len(lines) == 3


@pytest.mark.exec
def test_build_json_keeps_stdout_for_the_result(tmp_path, capsys):
    from planner.cli import main

    out = tmp_path / "fx"
    assert main(["fixtures", "build", "--steps", "2", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["steps"] == 2 and payload["recipe"] == "custom" and payload["params"] == 4_000_000
    assert (out / "config.json").is_file() and (out / "fitplan_fixture.json").is_file()
    assert "step 2/2 (100%)" in captured.err and "ETA 0:00" in captured.err and "done: validation" in captured.err


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--test", "--steps", "5"], "--test has its own"),
])
def test_bad_flags_are_one_clear_error(argv, message, capsys):
    from planner.cli import main

    assert main(["fixtures", "build", *argv]) == 2
    assert message in capsys.readouterr().err

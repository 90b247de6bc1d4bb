"""``fitplan report``: HTML (self-contained, rendered in headless Chromium) and Markdown from a study."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import dump_dom, screenshot
from planner.cli import main
from search.report import write_report

LLAMA = "meta-llama/Llama-3.1-8B"
SEARCH = ["search", LLAMA, "--max-memory-gb", "16", "--max-accuracy-loss", "8", "--gpu", "RTX 4090", "--sampler",
          "random", "--seed", "0", "--trials", "30", "--no-progress"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    storage = f"sqlite:///{root / 'fitplan.db'}"
    assert main([*SEARCH, "--storage", storage, "--study", "rep", "--out", str(root / "search")]) == 0
    return root, storage


def test_html_report_renders_in_headless_chromium_without_errors(study, tmp_path, capsys):
    root, storage = study
    out = tmp_path / "html"
    assert main(["report", "--storage", storage, "--study", "rep", "--out", str(out)]) == 0
    page = out / "report.html"
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    assert "<script src=\"http" not in text and "predictions only" in text  # offline, labelled
    dom, body = dump_dom(page, tmp_path / "p1")
    assert 'data-js-errors=""' in body, body  # the page's error guard caught nothing
    assert 'data-rendered="yes"' in body, body  # plotly drew the Pareto plot
    assert 'id="tradeoffs"' in dom and dom.count("<tr>") > 10
    assert "main-svg" in dom
    shot = screenshot(page, tmp_path / "p2", tmp_path / "report.png")
    assert shot.stat().st_size > 20_000


def test_markdown_report_has_every_section_and_its_plot(study, tmp_path):
    root, storage = study
    out = tmp_path / "md"
    assert main(["report", "--storage", storage, "--study", "rep", "--format", "md", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for heading in ("## Model analysis", "## Hardware requirements", "## Constraints", "## Ranked trade-offs",
                    "## Pareto front", "## Predictor quality", "## Recommendation"):
        assert heading in text
    assert "FP16 / INT8 / INT4 on NVIDIA GeForce RTX 4090" in text and "Predictions only" in text
    assert (out / "pareto.png").stat().st_size > 10_000


def test_report_mistakes_exit_2(study, tmp_path, capsys):
    root, storage = study
    assert main(["report", "--storage", storage, "--study", "rep", "--format", "pdf", "--out", str(tmp_path)]) == 2
    assert "unknown report format 'pdf'" in capsys.readouterr().err
    assert main(["report", "--storage", storage, "--study", "nope", "--out", str(tmp_path)]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err


def _measured_result(storage: str):
    """The study's result with three candidates executed as the closed loop records them (two measured,
    one failed for real): the table's measured_* columns next to the predictions."""
    from search.results import result_from_study
    from search.storage import open_storage
    from search.study import load_existing

    result = result_from_study(load_existing(open_storage(storage), "rep"))
    table = result.table.copy()
    for column in ("measured_quality_retained_pct", "measured_memory_gib", "measured_latency_ms"):
        table[column] = None
    table["measured_status"] = None
    table["measured_run"] = None
    for index, loss in ((0, 0.8), (1, 6.5)):
        table.loc[index, "measured_quality_retained_pct"] = table.loc[index, "quality_retained_pct"] - loss
        table.loc[index, "measured_memory_gib"] = table.loc[index, "memory_gib"] * 0.9
        table.loc[index, "measured_latency_ms"] = 40.0 + index
        table.loc[index, "measured_status"] = "ok"
        table.loc[index, "measured_run"] = f"/runs/{index}"
    table.loc[2, "measured_status"] = "failed: out of memory"
    return result.model_copy(update={"table": table})


def test_report_with_measurements_renders_predicted_next_to_measured(study, tmp_path):
    from planner.planning.constraints import Constraints
    from search.lab import validate
    from search.lab_records import LabSummary, MeasuredRun

    root, storage = study
    result = _measured_result(storage)
    constraints = Constraints(**result.request["constraints"])
    baseline = MeasuredRun(strategy="baseline", status="ok", quality_retained_pct=100.0, memory_gib=15.0,
                           latency_ms=50.0)
    validation = validate(result, constraints, baseline)
    # Measured on this machine, but the target is an RTX 4090: memory cannot be verified here.
    assert not validation.verified and "not measurable here" in validation.reason
    lab = LabSummary(model_dir=LLAMA, steps={"analysis": "done"}, baseline=baseline, validation=validation)
    page = write_report(result, tmp_path / "html", lab=lab)
    text = page.read_text()
    assert "predicted and measured" in text and "Predictions only" not in text
    header = re.search(r'<table id="tradeoffs"><thead><tr>(.*?)</tr>', text).group(1)
    cells = re.findall(r"<th>(.*?)</th>", header)
    # each measurement sits right after the prediction it checks
    assert cells[cells.index("quality %") + 4] == "measured quality %"
    assert cells[cells.index("GiB") + 1] == "measured GiB"
    assert text.count('<tr class="measured">') == 2 and text.count('<tr class="failed">') == 1
    assert 'id="checks"' in text and "Not verified" in text
    dom, body = dump_dom(page, tmp_path / "p1")
    assert 'data-js-errors=""' in body and 'data-rendered="yes"' in body, body
    legend = re.findall(r'class="legendtext"[^>]*>([^<]*)<', dom)
    assert "measured" in legend and "Pareto front" in legend, legend  # measured points drawn apart
    shot = screenshot(page, tmp_path / "p2", tmp_path / "measured.png", height=3000)
    assert shot.stat().st_size > 20_000


def test_pareto_points_take_the_measured_loss_from_the_measured_quality(study):
    from search.plots import pareto_points

    root, storage = study
    result = _measured_result(storage)
    points = pareto_points(result.table)
    assert len(points.measured) == 2  # the failed run has no measured quality
    expected = 100.0 - result.table.loc[[0, 1], "measured_quality_retained_pct"].astype(float)
    assert list(points.measured["measured_quality_loss_pct"].round(6)) == list(expected.round(6))


def test_report_rebuilds_a_predicted_only_search_of_a_local_directory_offline(tmp_path, capsys, monkeypatch):
    """The request records the config's name ('my-private-model'), which no registry or hub lookup resolves
    offline: the study also records the directory and its config, and says so when the directory moved."""
    import json
    import shutil

    from tests.test_search_loop import LLAMA_8B_CONFIG

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tmp_path / "models" / "my-private-model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["search", str(model), "--max-memory-gb", "16", "--gpu", "RTX 4090", "--sampler", "random",
                 "--seed", "0", "--trials", "8", "--no-progress", "--storage", storage, "--study", "local",
                 "--out", str(tmp_path / "search")]) == 0
    capsys.readouterr()
    report = ["report", "--storage", storage, "--study", "local", "--format", "md"]
    assert main([*report, "--out", str(tmp_path / "r1")]) == 0
    assert "my-private-model" in (tmp_path / "r1" / "report.md").read_text()
    assert capsys.readouterr().err == ""  # the directory is where it was: nothing to say
    moved = tmp_path / "elsewhere"
    shutil.move(str(model), moved)
    assert main([*report, "--out", str(tmp_path / "r2")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the model directory {model} recorded by the search no longer exists" in err[0]
    first, second = ((tmp_path / r / "report.md").read_text() for r in ("r1", "r2"))
    assert "Model analysis" in second and second.split("## Model analysis")[1].split("##")[0] == \
        first.split("## Model analysis")[1].split("##")[0]  # the same parameter breakdown, from the recorded config


def _tradeoff_lines(text: str, heading: str | None = None) -> list[str]:
    """The lines of the Markdown trade-off table (after ``heading`` when given) and its footnotes."""
    if heading is not None:
        text = text.split(heading, 1)[1]
    start = text.index("| ")
    block = text[start:].split("\n## ", 1)[0]
    return block.splitlines()


def test_markdown_tradeoff_tables_fit_80_columns_and_keep_the_answer(study, tmp_path):
    """table.md and report.md: every line within 80 characters, with rank, strategy, quality, memory and
    verdict; a long strategy cut in a cell is written out in full below; every column stays in the CSV."""
    import pandas as pd

    from planner.strategy import BlockFormat, CompressionStrategy, QuantizationSpec, SparsitySpec

    root, storage = study
    result = _measured_result(storage)
    table = result.table.copy()
    long = CompressionStrategy(quantization=QuantizationSpec(
        weights="nf4", kv_cache="fp8", block_formats=tuple(BlockFormat(block=b, group="mlp", format="int8")
                                                           for b in range(6))),
        sparsity=SparsitySpec(level=0.125, pattern="heads"))
    table.loc[1, "strategy"] = long.summary()  # 70+ characters, with '|' separators
    result = result.model_copy(update={"table": table})
    for measured in (False, True):
        current = result if measured else result.model_copy(update={"table": table.assign(measured_status=None)})
        paths = current.write(tmp_path / f"files-{measured}")
        report = write_report(current, tmp_path / f"report-{measured}", fmt="md")
        for text in (paths["md"].read_text(), _tradeoff_lines(report.read_text(), "## Ranked trade-offs")):
            lines = _tradeoff_lines(text) if isinstance(text, str) else text
            assert max(len(line) for line in lines) <= 80, "\n".join(lines)
            header = [h.strip() for h in lines[0].strip("|").split("|")]
            assert header[:3] == ["#", "strategy", "qual%"] and "GiB" in header and header[-1] == "ok"
            assert ("m.qual%" in header and "run" in header) == measured
            joined = "\n".join(lines)
            assert "Strategies cut above, in full:" in joined
            full = " ".join(joined.split("Strategies cut above, in full:")[1].split())
            assert long.summary() in full  # the whole strategy, wrapped
            assert lines[2].replace(" ", "").startswith(f"|{int(table.loc[0, 'rank'])}|")  # rank order kept
        csv = pd.read_csv(paths["csv"])
        assert {"why_not", "strategy_json", "quality_low_pct", "usd_per_hour"} <= set(csv.columns)
        assert long.summary() in set(csv["strategy"])


def test_every_markdown_table_of_a_measured_report_fits_80_columns_and_keeps_the_key_figures(study, tmp_path):
    """report.md with measurements, a lab baseline and per-round predictor quality: every table line within
    80 characters; the baseline's quality, memory and latency, the hardware answers and each round's MAE and
    Spearman are still there; a cut cell is written out in full and left-out columns are named."""
    from search.lab_records import LabSummary, MeasuredRun
    from search.measured import RoundReport

    root, storage = study
    result = _measured_result(storage)
    rounds = [RoundReport(round=1, predictor="profile", fit_records=0, held_out=6, quality_loss_mae=0.939,
                          quality_spearman=0.588, quality_coverage=0.667, memory_error_pct=16.3,
                          latency_error_pct=26.3, executed=3, evaluations=4, recommendation="bf16 keep 1+1 at bf16",
                          seconds=21.3),
              RoundReport(round=2, predictor="profile, calibrated on 3 llama records", fit_records=3, held_out=3,
                          quality_loss_mae=0.0268, quality_spearman=0.912, quality_coverage=0.667,
                          memory_error_pct=10.6, latency_error_pct=28.5, executed=3, evaluations=7,
                          recommendation="bf16 keep 1+1 at bf16", recommendation_verified=True, seconds=23.0)]
    result = result.model_copy(update={"rounds": rounds})
    baseline = MeasuredRun(strategy="baseline", status="ok", device="cpu", evaluator="perplexity (perplexity)",
                           quality_retained_pct=100.0, memory_gib=0.506, latency_ms=51.7, batch="8 x 128 tokens",
                           tokens_per_s=19813.0, seconds=13.1)
    lab = LabSummary(model_dir=LLAMA, steps={"analysis": "done"}, baseline=baseline)
    text = write_report(result, tmp_path / "md", fmt="md", lab=lab).read_text()
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) > 40 and max(len(line) for line in table_lines) <= 80, \
        "\n".join(line for line in table_lines if len(line) > 80)
    base = text.split("### Baseline", 1)[1].split("\n#", 1)[0]
    for field, value in (("quality_retained_pct", "100"), ("memory_gib", "0.506"), ("latency_ms", "51.7"),
                         ("tokens_per_s", "19,813"), ("evaluator", "perplexity (perplexity)")):
        assert re.search(rf"\| {field} +\| {re.escape(value)} +\|", base), base
    per_round = text.split("## Predictor quality", 1)[1].split("\n## ", 1)[0]
    header = [h.strip() for h in next(l for l in per_round.splitlines() if l.startswith("|")).strip("|").split("|")]
    assert header[:2] == ["#", "predictor"] and {"MAE", "Spearman"} <= set(header)
    for number, mae, rho in (("1", "0.939", "0.588"), ("2", "0.0268", "0.912")):
        row = next(l for l in per_round.splitlines() if l.startswith(f"| {number} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[header.index("MAE")] == mae and cells[header.index("Spearman")] == rho
    assert "- round 2, predictor: profile, calibrated on 3 llama records" in per_round  # cut, then in full
    assert "Only in report.html:" in per_round and "seconds" in per_round.split("Only in report.html:")[1]
    hardware = text.split("## Hardware requirements", 1)[1].split("\n## ", 1)[0]
    assert "| format " in hardware and "qual%" in hardware and "GiB" in hardware
    assert hardware.count("| NVIDIA") >= 8 and "GiB/GPU" in hardware and "$/h" in hardware


def test_a_search_with_nothing_feasible_names_its_nearest_misses_and_what_each_violates(tmp_path):
    from planner.planning.constraints import Constraints
    from search.lab import validate
    from search.results import result_from_study
    from search.storage import open_storage
    from search.study import load_existing

    storage = f"sqlite:///{tmp_path / 'none.db'}"
    tight = [*SEARCH[:2], "--max-memory-gb", "1", *SEARCH[4:]]  # no 8B strategy fits 1 GB
    assert main([*tight, "--trials", "12", "--storage", storage, "--study", "none", "--out", str(tmp_path / "s")]) == 0
    result = result_from_study(load_existing(open_storage(storage), "none"))
    assert result.best is None
    misses = result.nearest_misses()
    assert len(misses) == 3 and all("GiB > 1.0 GiB per GPU" in why for _, why in misses)
    assert misses[0][0] == result.table[~result.table["feasible"].astype(bool)].iloc[0]["strategy"]
    text = write_report(result, tmp_path / "md", fmt="md").read_text()
    assert f"Nearest misses: `{misses[0][0]}` ({misses[0][1]})" in text
    note = validate(result, Constraints(**result.request["constraints"]), None).deployment_note
    assert note.startswith("No strategy met every constraint. Nearest misses:") and misses[2][1] in note


def test_predictor_error_is_not_reported_on_the_reference_alone():
    """The uncompressed reference is predicted and measured at 100% by definition: it is no evidence."""
    import pandas as pd

    from search.report import _predictor_text

    table = pd.DataFrame([{"strategy": "baseline (reference)", "reference": True, "quality_retained_pct": 100.0,
                           "quality_low_pct": 100.0, "quality_high_pct": 100.0,
                           "measured_quality_retained_pct": 100.0},
                          {"strategy": "nf4", "reference": False, "quality_retained_pct": 98.0,
                           "quality_low_pct": 97.0, "quality_high_pct": 99.0,
                           "measured_quality_retained_pct": None}])
    text = _predictor_text({"measured": True, "table": table})
    assert text.startswith("Only the uncompressed reference was measured")
    table.loc[1, "measured_quality_retained_pct"] = 96.0
    assert _predictor_text({"measured": True, "table": table}).startswith(
        "1 measured candidates; mean absolute error of predicted quality (final predictions, fitted on these "
        "measurements): 2.00 points; 0 of 1")

"""``fitplan report``: a self-contained report of a search, from its Optuna study alone.

Sections (the seed lab's deliverable): model analysis (parameter breakdown), hardware requirements
(the FP16 / INT8 / INT4 comparison on the target GPU, GPUs needed per GPU type for inference and for
QLoRA fine-tuning), the constraints, the ranked trade-off table (predicted columns, and measured columns
next to them for candidates that were executed), the Pareto plot, predictor quality, and the
recommendation with a deployment note. Every figure comes from the planner functions that print it
elsewhere (``planner.planning.compare_formats``, ``planner.size_cluster``, the stored predictions).

- HTML: one file that works offline: plotly.js is embedded (no CDN), styles inline. A small script
  records JavaScript errors into ``data-js-errors`` on ``<body>`` and marks ``data-rendered`` once the
  plot is drawn, so a headless browser test can check both.
- Markdown: ``report.md`` with ``pareto.png`` beside it.

A study without measurements gives a predicted-only report, labelled as such in its title and table.
With measurements (closed loop, ``fitplan lab``) the table puts each measured figure next to its
prediction, measured rows are marked (and drawn as stars in the Pareto plot), predictor quality is
shown per round (``SearchResult.rounds``), and the recommendation's deployment note uses the measured
figures. ``fitplan lab`` passes a :class:`~search.lab_records.LabSummary` (measured baseline,
validation of the recommendation, export) that adds its own sections.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError
from search.results import reference_mask
from search.table_markdown import ROUND_HEADERS, ROUND_TABLE

FORMATS = ("html", "md")
TABLE_TOP = 25
# (column, header): each measured column sits right after the prediction it checks. Columns with no
# value in any row are left out (e.g. $ on a CPU), measured ones too in a predicted-only report.
SHOWN_COLUMNS = (("rank", "#"), ("strategy", "strategy"), ("quality_retained_pct", "quality %"),
                 ("quality_low_pct", "low"), ("quality_high_pct", "high"), ("basis", "basis"),
                 ("measured_quality_retained_pct", "measured quality %"), ("memory_gib", "GiB"),
                 ("measured_memory_gib", "measured GiB"), ("latency_ms", "latency ms"),
                 ("measured_latency_ms", "measured ms"), ("gpus", "GPUs"), ("tokens_per_s", "tok/s"),
                 ("speedup", "speedup"), ("usd_per_1m_tokens", "$/1M tok"), ("measured_status", "run"),
                 ("feasible", "feasible"), ("why_not", "why not"))
# Without a GPU the seed's FP16/INT8/INT4 comparison is shown on the seed lab's reference card.
REFERENCE_GPU = "RTX 4090"


def target_gpu(constraints) -> tuple[str, bool]:  # noqa: ANN001 - Constraints
    """The GPU the hardware comparison is computed on, and whether it is the seed lab's reference card
    (used when the target is not a GPU: a CPU, or a capacity such as '16GB')."""
    import hardware_db

    acc = constraints.gpu_accelerator()
    if acc is None or acc.is_generic or acc.memory_type == "host DRAM":
        return hardware_db.get(REFERENCE_GPU).name, True
    return acc.name, False


def hardware_requirements(spec, constraints) -> dict[str, Any]:  # noqa: ANN001 - ModelSpec, Constraints
    """The report's hardware section, title -> table: the seed's FP16/INT8/INT4 comparison
    (``compare_formats``) on :func:`target_gpu`, and GPUs needed per GPU type (``size_cluster``) for
    inference and QLoRA fine-tuning. Each value is a DataFrame, or a string saying why it was not computed."""
    from planner.planning.compare import compare_formats
    from planner.sizing.cluster import size_cluster

    hardware: dict[str, Any] = {}
    gpu, reference = target_gpu(constraints)
    title = f"FP16 / INT8 / INT4 on {gpu}" + (" (the seed lab's reference GPU; the target is not a GPU)"
                                               if reference else "")
    try:
        hardware[title] = compare_formats(spec, gpu, batch=constraints.batch or 8, context=constraints.context or 2048)
    except Exception as error:  # noqa: BLE001 - a section that cannot be computed says why
        hardware[title] = f"not computed: {error}"
    context = min(constraints.context or 4096, spec.max_position_embeddings or 4096)
    baseline = "bf16"
    for title, kwargs in ((f"inference ({baseline}, {context:,} tokens)", {"precision": baseline, "seq_len": context}),
                          (f"QLoRA fine-tuning (nf4 base, {min(2048, context):,} tokens)",
                           {"mode": "qlora", "seq_len": min(2048, context)})):
        try:
            frame = size_cluster(spec, **kwargs)
        except Exception as error:  # noqa: BLE001 - a section that cannot be computed says why
            hardware[title] = f"not computed: {error}"
            continue
        columns = [c for c in ("gpu", "gpus", "tp", "pp", "per_gpu_safe_gib", "decode_tok_s",
                               "usd_per_million_tokens", "usd_per_hour") if c in frame.columns]
        hardware[title] = frame[columns].head(8)
    return hardware


def _sections(result, lab=None, model=None) -> dict[str, Any]:  # noqa: ANN001 - SearchResult, LabSummary
    """Every figure of the report, computed once (both renderers use it)."""
    import pandas as pd

    from planner.models.resolve import get_model
    from planner.planning.constraints import Constraints

    request = result.request
    spec = get_model(lab.model_dir if lab is not None else model or request["model"])
    constraints = Constraints(**request.get("constraints", {}))
    params = spec.params.model_dump()
    analysis = pd.DataFrame([{"component": k, "parameters": v, "share %": 100.0 * v / params["total"]}
                             for k, v in params.items() if k not in ("total", "active") and v])
    table = result.table.copy()
    measured_columns = [c for c in table.columns if c.startswith("measured_")]
    measured = bool(measured_columns) and table[measured_columns].notna().any().any()
    return {"spec": spec, "constraints": constraints, "analysis": analysis,
            "hardware": hardware_requirements(spec, constraints), "table": table, "measured": measured,
            "shown": _shown_columns(table, measured), "best": result.best, "rounds": _rounds(result), "lab": lab}


def _shown_columns(table, measured: bool) -> list[tuple[str, str]]:  # noqa: ANN001 - DataFrame
    shown = []
    for column, header in SHOWN_COLUMNS:
        if column not in table.columns or (column.startswith("measured_") and not measured):
            continue
        if column not in ("rank", "strategy", "feasible", "why_not") and table[column].isna().all():
            continue
        shown.append((column, header))
    return shown


# Headers of search.measured.RoundReport's fields (others are shown under their own name).


# report.md within 80 columns (search.table_markdown.frame_markdown), per table (told apart by its first
# column): short headers, and what to give up first when the table is too wide (report.html has every column).
MARKDOWN_TABLES: dict[str, tuple[dict[str, str], tuple[tuple[str, str], ...]]] = {
    "format": ({"memory_gib": "GiB", "gpus_needed": "gpus", "utilization_pct": "util%", "usd_per_hour": "$/h",
                "purchase_usd": "buy $", "tokens_per_s": "tok/s", "retained_pct": "qual%", "retained_low_pct": "low%",
                "retained_high_pct": "high%"},
               (("drop", "utilization_pct"), ("drop", "purchase_usd"), ("drop", "basis"), ("shrink", "note"),
                ("drop", "retained_low_pct"), ("drop", "retained_high_pct"))),
    "gpu": ({"per_gpu_safe_gib": "GiB/GPU", "decode_tok_s": "tok/s", "usd_per_million_tokens": "$/1M",
             "usd_per_hour": "$/h"}, (("drop", "pp"), ("drop", "tp"), ("drop", "decode_tok_s"))),
    "round": ROUND_TABLE,
}


def _markdown_frame(frame) -> str:  # noqa: ANN001 - DataFrame
    from search.table_markdown import frame_markdown

    labels, steps = MARKDOWN_TABLES.get(str(frame.columns[0]), ({}, ())) if len(frame.columns) else ({}, ())
    return frame_markdown(frame, labels=labels, steps=steps, elsewhere="report.html")


def _rounds(result):  # noqa: ANN001 - SearchResult -> DataFrame | None
    """Predictor quality per round of a closed-loop search (``SearchResult.rounds``), one row each."""
    from search.results import rounds_frame

    rounds = getattr(result, "rounds", None) or []
    return rounds_frame(rounds).rename(columns=ROUND_HEADERS) if rounds else None


def write_report(result, out_dir: str | Path, *, fmt: str = "html", lab=None,  # noqa: ANN001
                 model: str | None = None) -> Path:
    """Write the report of ``result`` (a SearchResult) into ``out_dir``; returns the report's path.
    ``lab``: the :class:`~search.lab_records.LabSummary` of a ``fitplan lab`` run (adds its sections).
    ``model``: where to read the model from when the request's name does not resolve (a local directory)."""
    if fmt not in FORMATS:
        from hardware_db.names import did_you_mean

        raise InvalidRequestError(f"unknown report format {fmt!r}.{did_you_mean(fmt, FORMATS)} Allowed: "
                                  f"{', '.join(FORMATS)}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(f"--out {str(out_dir)!r} is a file; give a directory.")
    out.mkdir(parents=True, exist_ok=True)
    data = _sections(result, lab, model)
    if fmt == "md":
        return _markdown(result, data, out)
    return _html(result, data, out)


def _title(result, data) -> str:  # noqa: ANN001
    kind = "predicted and measured" if data["measured"] else "predictions only (no candidate executed)"
    return f"fitplan report: {result.request.get('model')} ({kind})"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _rows(frame, columns=None) -> tuple[list[str], list[list[str]]]:  # noqa: ANN001 - DataFrame
    pairs = columns or [(c, c) for c in frame.columns]
    pairs = [(c, h) for c, h in pairs if c in frame.columns]
    return [h for _, h in pairs], [[_cell(v) for v in row] for row in frame[[c for c, _ in pairs]].itertuples(index=False)]


def _number(row: dict[str, Any], key: str) -> float | None:
    from search.measured import number

    return number(row.get(key))


def deployment_note(best: dict[str, Any] | None, constraints,  # noqa: ANN001 - Constraints
                    misses: list[tuple[str, str]] = ()) -> str:
    """One paragraph: how to deploy the recommended row ``best`` of a trade-off table (engine, device,
    memory, expected speed, cost), with its measured figures next to the predicted ones when it was run;
    without one, the nearest misses (``SearchResult.nearest_misses``) and what each violates."""
    if best is None:
        if not misses:
            return "No strategy met every constraint."
        listed = "; ".join(f"`{strategy}` ({why})" for strategy, why in misses)
        return f"No strategy met every constraint. Nearest misses: {listed}."
    engine = constraints.resolved_engine
    where = f"{best.get('gpus') or constraints.gpus} x {constraints.gpu}" if constraints.gpu else "the memory budget"
    local = constraints.is_local  # measured memory and latency are the target's own only on the local device
    if local:
        from planner.planning.local import local_device

        where = f"this machine, {local_device().name}"
    memory, measured_memory = _number(best, "memory_gib"), _number(best, "measured_memory_gib")
    parts = [f"Deploy `{best['strategy']}` with {engine} on {where}"]
    if best.get("reference"):  # search.results: recommended only when no compressed candidate is feasible
        parts = ["No compression needed: the uncompressed model meets every constraint and no compressed "
                 f"candidate does. Deploy it unchanged with {engine} on {where}"]
    figures = []
    if memory is not None:
        figures.append(f"{memory:.2f} GiB predicted" + (f", {measured_memory:.2f} GiB measured"
                                                        if measured_memory is not None and local else ""))
    latency, measured_latency = _number(best, "latency_ms"), _number(best, "measured_latency_ms")
    measured_latency = measured_latency if local else None
    if latency is not None or measured_latency is not None:
        text = " / ".join(f"{v:,.1f} ms {k}" for k, v in (("predicted", latency), ("measured", measured_latency))
                          if v is not None)
        figures.append(f"forward latency {text}")
    if _number(best, "tokens_per_s"):
        figures.append(f"{best['tokens_per_s']:,.0f} tokens/s expected")
    if _number(best, "speedup"):
        figures.append(f"{best['speedup']:.2f}x the uncompressed model")
    cost = _number(best, "usd_per_1m_tokens")
    figures.append(f"${cost:.3g} per 1M output tokens" if cost is not None else
                   f"no cost: the catalog has no price for {constraints.gpu or 'this device'}")
    quality = (f"quality retained {best['quality_retained_pct']:.1f}% predicted (80%: "
               f"{best['quality_low_pct']:.1f}-{best['quality_high_pct']:.1f}, {best['basis']})")
    measured_quality = _number(best, "measured_quality_retained_pct")
    if measured_quality is not None:
        quality += f", {measured_quality:.1f}% measured"
    return f"{parts[0]}: {'; '.join(figures)}; {quality}."


def _predictor_text(data) -> str:  # noqa: ANN001
    if not data["measured"]:
        return "No measurements yet: the predictor's error cannot be reported (run candidates for real first)."
    table = data["table"]
    both = table[table["measured_quality_retained_pct"].notna() & ~reference_mask(table)]
    if both.empty:
        return ("Only the uncompressed reference was measured: the predictor's error cannot be reported yet "
                "(no compressed candidate was executed).")
    errors = (both["quality_retained_pct"] - both["measured_quality_retained_pct"]).abs()
    inside = ((both["measured_quality_retained_pct"] >= both["quality_low_pct"]) &
              (both["measured_quality_retained_pct"] <= both["quality_high_pct"])).sum()
    return (f"{len(both)} measured candidates; mean absolute error of predicted quality (final predictions, fitted "
            f"on these measurements): {errors.mean():.2f} points; {inside} of {len(both)} measured inside their 80% "
            f"interval. Per round, the error on candidates measured in later rounds (held out from the fit):")


def _blocks(result, data) -> list[tuple]:  # noqa: ANN001
    """The report as renderer-neutral blocks: ('h2'|'h3'|'p'|'note'|'rec'|'pre', text), ('table', frame,
    columns, id, row classes), ('plot',)."""
    spec, lab = data["spec"], data["lab"]
    blocks: list[tuple] = []
    if lab is not None and lab.stopped:
        blocks.append(("note", lab.stopped))
    blocks.append(("p", f"Study {result.study_name}: {result.n_complete} of {result.n_trials} trials complete, "
                        f"{result.n_failed} failed. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}."))
    if lab is not None and lab.steps:
        blocks += [("h2", "Lab steps"), ("table", _frame([{"step": k, "status": v} for k, v in lab.steps.items()]),
                                          None, None, None)]
        blocks += [("p", f"Note: {note}.") for note in (lab.notes if lab is not None else [])]
    blocks += [("h2", "Model analysis"),
               ("p", f"{spec.name}: {spec.params.total:,} parameters ({spec.params.active:,} active), "
                     f"{spec.num_layers} layers, model type {spec.model_type}."),
               ("table", data["analysis"], None, None, None)]
    if lab is not None and lab.baseline is not None:
        base = lab.baseline
        blocks += [("h3", "Baseline (the uncompressed model, measured on this machine)"),
                   ("table", _frame([base.model_dump(exclude={"run_dir", "result_path"}, exclude_none=True)]), None,
                    "baseline", None)]
    if lab is not None and lab.profile:
        blocks.append(("p", f"Sensitivity profile: {lab.profile}"))
    blocks.append(("h2", "Hardware requirements"))
    for title, frame in data["hardware"].items():
        blocks += [("h3", title), ("p", frame) if isinstance(frame, str) else ("table", frame, None, None, None)]
    blocks += [("h2", "Constraints"), ("pre", json.dumps(result.request.get("constraints"), indent=2)),
               ("h2", "Ranked trade-offs")]
    table = data["table"].head(TABLE_TOP)
    if not data["measured"]:
        blocks.append(("note", "Predictions only: no candidate of this study was executed."))
    else:
        blocks.append(("p", "Predicted columns are followed by the measured ones (this machine); rows of executed "
                            "candidates are marked (run = ok, or failed with the reason)."))
    classes = None
    if "measured_status" in table.columns:
        classes = ["failed" if str(s).startswith("failed") else "measured" if isinstance(s, str) and s else ""
                   for s in table["measured_status"]]
        if "reference" in table.columns:
            classes = [f"{c} reference".strip() if bool(r) is True else c
                       for c, r in zip(classes, table["reference"].fillna(False))]
    blocks += [("table", table, data["shown"], "tradeoffs", classes), ("h2", "Pareto front"), ("plot",),
               ("h2", "Predictor quality"), ("p", _predictor_text(data))]
    if data["rounds"] is not None:
        blocks.append(("table", data["rounds"], None, "rounds", None))
    elif data["measured"]:
        blocks.append(("p", "No per-round report in this study."))
    validation = lab.validation if lab is not None else None
    blocks += [("h2", "Recommendation"), ("rec", validation.deployment_note if validation is not None else
                                          deployment_note(data["best"], data["constraints"],
                                                          result.nearest_misses()))]
    if validation is not None:
        blocks += [("h2", "Validation"), ("note" if not validation.verified else "rec",
                                          ("Verified: " if validation.verified else "Not verified: ") + validation.reason)]
        if validation.checks:
            blocks.append(("table", _frame([c.model_dump() for c in validation.checks]), None, "checks", None))
        if validation.export is not None:
            export = validation.export
            text = (f"Exported `{export.strategy}` to {export.path} ({export.quantization or 'dense'}); reload round "
                    f"trip max |diff| {export.round_trip_max_abs_diff:.3g}, "
                    f"{'verified' if export.round_trip_verified else 'NOT verified'}." if export.status == "ok" else
                    f"Export of `{export.strategy}`: {export.status}: {export.reason}")
            blocks += [("h3", "Export (--save-best)"), ("p", text)]
    return blocks


def _frame(rows: list[dict[str, Any]]):  # noqa: ANN202
    import pandas as pd

    return pd.DataFrame(rows)


def _markdown(result, data, out: Path) -> Path:  # noqa: ANN001
    from search.table_markdown import compact_columns, markdown_table

    png = result.plot_pareto(out / "pareto.png")
    lines = [f"# {_title(result, data)}", ""]
    for block in _blocks(result, data):
        kind = block[0]
        if kind in ("h2", "h3"):
            lines += [f"{'#' * int(kind[1])} {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "note":
            lines += [f"*{block[1]}*", ""]
        elif kind == "rec":
            lines += [f"**{block[1]}**", ""]
        elif kind == "pre":
            lines += ["```json", block[1], "```", ""]
        elif kind == "plot":
            lines += [f"![Pareto front]({png.name})", ""]
        elif kind == "table":
            _, frame, columns, _, _ = block
            if columns is None:
                lines += [_markdown_frame(frame), ""]
                continue
            if block[3] == "tradeoffs":  # within 80 columns; the HTML report and table.csv have every column
                lines += [markdown_table(frame, compact_columns(result.table, result.request)), ""]
                continue
            headers, rows = _rows(frame, columns)
            lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.measured td{background:#eef7ee}.scroll{overflow-x:auto}tr.failed td{background:#fdecea}
.note{background:#fff8e1;padding:.5rem .8rem;border-left:3px solid #f0b400}.rec{background:#e8f5e9;padding:.6rem .9rem;
border-left:3px solid #2e933c}pre{background:#f7f7f7;padding:.6rem}
"""

_GUARD = """<script>
document.body.dataset.jsErrors = "";
window.addEventListener("error", function (e) {
  document.body.dataset.jsErrors += (e.message || "error") + "; ";
});
</script>"""

_RENDERED = """<script>
(function () {
  var plot = document.querySelector(".plotly-graph-div");
  function done() { document.body.dataset.rendered = plot && plot.querySelector(".main-svg") ? "yes" : "no"; }
  if (window.Plotly && plot) { setTimeout(done, 0); } else { done(); }
})();
</script>"""


def _html_table(frame, columns=None, table_id: str | None = None, classes=None) -> str:  # noqa: ANN001
    headers, rows = _rows(frame, columns)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for cell in row:
            numeric = cell.replace(",", "").replace(".", "", 1).replace("-", "", 1).isdigit()
            cells.append(f"<td class=\"num\">{html.escape(cell)}</td>" if numeric else f"<td>{html.escape(cell)}</td>")
        kind = classes[index] if classes else ""
        body.append((f'<tr class="{kind}">' if kind else "<tr>") + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"</div>")


def _html(result, data, out: Path) -> Path:  # noqa: ANN001
    from search.plots import pareto_figure

    x = "memory_gib" if "memory_gib" in result.objectives else "tokens_per_s"
    title = "fitplan: predicted and measured trade-offs" if data["measured"] else "fitplan: predicted trade-offs"
    figure = pareto_figure(result.table, x=x, title=title).to_html(full_html=False, include_plotlyjs=True,
                                                                  div_id="pareto")
    parts = [f"<h1>{html.escape(_title(result, data))}</h1>"]
    for block in _blocks(result, data):
        kind = block[0]
        if kind in ("h2", "h3"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind in ("note", "rec"):
            parts.append(f'<p class="{kind}">{html.escape(block[1])}</p>')
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "plot":
            parts.append(figure)
        elif kind == "table":
            _, frame, columns, table_id, classes = block
            parts.append(_html_table(frame, columns, table_id=table_id, classes=classes))
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(_title(result, data))}"
            f"</title><style>{_STYLE}</style></head><body>{_GUARD}{''.join(parts)}{_RENDERED}</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path

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
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError

FORMATS = ("html", "md")
TABLE_TOP = 25
SHOWN_COLUMNS = (("rank", "#"), ("strategy", "strategy"), ("quality_retained_pct", "quality %"),
                 ("quality_low_pct", "low"), ("quality_high_pct", "high"), ("basis", "basis"),
                 ("measured_quality_retained_pct", "measured quality %"), ("memory_gib", "GiB/GPU"),
                 ("measured_memory_gib", "measured GiB"), ("gpus", "GPUs"), ("tokens_per_s", "tok/s"),
                 ("speedup", "speedup"), ("usd_per_1m_tokens", "$/1M tok"), ("feasible", "feasible"),
                 ("why_not", "why not"))


def _sections(result) -> dict[str, Any]:  # noqa: ANN001 - SearchResult
    """Every figure of the report, computed once (both renderers use it)."""
    import pandas as pd

    from planner.models.resolve import get_model
    from planner.planning.constraints import Constraints

    request = result.request
    spec = get_model(request["model"])
    constraints = Constraints(**request.get("constraints", {}))
    params = spec.params.model_dump()
    analysis = pd.DataFrame([{"component": k, "parameters": v, "share %": 100.0 * v / params["total"]}
                             for k, v in params.items() if k not in ("total", "active") and v])
    hardware: dict[str, Any] = {}
    if constraints.gpu:
        from planner.planning.compare import compare_formats

        hardware["compare"] = compare_formats(spec, constraints.gpu, batch=constraints.batch or 8,
                                              context=constraints.context or 2048)
    from planner.sizing.cluster import size_cluster

    baseline = "bf16"
    for title, kwargs in ((f"inference ({baseline}, {constraints.context or 4096} tokens)",
                           {"precision": baseline, "seq_len": constraints.context or 4096}),
                          ("QLoRA fine-tuning (nf4 base, 2,048 tokens)", {"mode": "qlora", "seq_len": 2048})):
        try:
            frame = size_cluster(spec, **kwargs)
        except Exception as error:  # noqa: BLE001 - a section that cannot be computed says why
            hardware[title] = f"not computed: {error}"
            continue
        columns = [c for c in ("gpu", "gpus", "tp", "pp", "per_gpu_safe_gib", "decode_tok_s",
                               "usd_per_million_tokens", "usd_per_hour") if c in frame.columns]
        hardware[title] = frame[columns].head(8)
    table = result.table.copy()
    measured = [c for c in table.columns if c.startswith("measured_")]
    best = result.best
    return {"spec": spec, "constraints": constraints, "analysis": analysis, "hardware": hardware, "table": table,
            "measured": bool(measured) and table[measured].notna().any().any(), "best": best}


def write_report(result, out_dir: str | Path, *, fmt: str = "html") -> Path:  # noqa: ANN001 - SearchResult
    """Write the report of ``result`` into ``out_dir``; returns the report's path."""
    if fmt not in FORMATS:
        from hardware_db.names import did_you_mean

        raise InvalidRequestError(f"unknown report format {fmt!r}.{did_you_mean(fmt, FORMATS)} Allowed: "
                                  f"{', '.join(FORMATS)}.")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(f"--out {str(out_dir)!r} is a file; give a directory.")
    out.mkdir(parents=True, exist_ok=True)
    data = _sections(result)
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


def _deployment_note(result, data) -> str:  # noqa: ANN001
    best, c = data["best"], data["constraints"]
    if best is None:
        return ("No strategy met every constraint; the table lists the closest candidates and what each "
                "violates.")
    engine = c.resolved_engine if hasattr(c, "resolved_engine") else (c.engine or "hf")
    where = f"{best.get('gpus') or c.gpus} x {c.gpu}" if c.gpu else "the memory budget"
    speed = f", {best['tokens_per_s']:,.0f} tokens/s decode" if best.get("tokens_per_s") else ""
    cost = f", ${best['usd_per_1m_tokens']:.3g} per 1M output tokens" if best.get("usd_per_1m_tokens") else ""
    return (f"Deploy `{best['strategy']}` with {engine} on {where}: {best['memory_gib']:.2f} GiB per GPU"
            f"{speed}{cost}; predicted quality retained {best['quality_retained_pct']:.1f}% "
            f"(80%: {best['quality_low_pct']:.1f}-{best['quality_high_pct']:.1f}, {best['basis']}).")


def _markdown(result, data, out: Path) -> Path:  # noqa: ANN001
    from search.results import _markdown_table

    png = result.plot_pareto(out / "pareto.png")
    lines = [f"# {_title(result, data)}", "",
             f"Study `{result.study_name}`, {result.n_complete} of {result.n_trials} trials complete; generated "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.", "", "## Model analysis", "",
             f"`{data['spec'].name}`: {data['spec'].params.total:,} parameters "
             f"({data['spec'].params.active:,} active), {data['spec'].num_layers} layers.", "",
             _markdown_table(data["analysis"]), "", "## Hardware requirements", ""]
    for title, frame in data["hardware"].items():
        lines += [f"### {'FP16 / INT8 / INT4 on ' + data['constraints'].gpu if title == 'compare' else title}", ""]
        lines += [frame if isinstance(frame, str) else _markdown_table(frame), ""]
    lines += ["## Constraints", "", "```json", json.dumps(result.request.get("constraints"), indent=2), "```", "",
              "## Ranked trade-offs", ""]
    if not data["measured"]:
        lines += ["*Predictions only: no candidate was executed.*", ""]
    headers, rows = _rows(data["table"].head(TABLE_TOP), list(SHOWN_COLUMNS))
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines += ["", "## Pareto front", "", f"![Pareto front]({png.name})", "", "## Predictor quality", "",
              _predictor_text(data), "", "## Recommendation", "", _deployment_note(result, data), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _predictor_text(data) -> str:  # noqa: ANN001
    if not data["measured"]:
        return "No measurements yet: the predictor's error cannot be reported (run candidates for real first)."
    table = data["table"]
    both = table[table["measured_quality_retained_pct"].notna()]
    errors = (both["quality_retained_pct"] - both["measured_quality_retained_pct"]).abs()
    return f"{len(both)} measured candidates; mean absolute error of predicted quality: {errors.mean():.2f} points."


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
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


def _html_table(frame, columns=None, table_id: str | None = None) -> str:  # noqa: ANN001 - DataFrame
    headers, rows = _rows(frame, columns)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = cell.replace(",", "").replace(".", "", 1).replace("-", "", 1).isdigit()
            cells.append(f"<td class=\"num\">{html.escape(cell)}</td>" if numeric else f"<td>{html.escape(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html(result, data, out: Path) -> Path:  # noqa: ANN001
    from search.plots import pareto_figure

    x = "memory_gib" if "memory_gib" in result.objectives else "tokens_per_s"
    figure = pareto_figure(result.table, x=x).to_html(full_html=False, include_plotlyjs=True, div_id="pareto")
    spec = data["spec"]
    parts = [f"<h1>{html.escape(_title(result, data))}</h1>",
             f"<p>Study <code>{html.escape(result.study_name)}</code>: {result.n_complete} of {result.n_trials} trials "
             f"complete, {result.n_failed} failed. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.</p>",
             "<h2>Model analysis</h2>",
             f"<p><code>{html.escape(spec.name)}</code>: {spec.params.total:,} parameters ({spec.params.active:,} "
             f"active), {spec.num_layers} layers, model type {html.escape(spec.model_type)}.</p>",
             _html_table(data["analysis"]), "<h2>Hardware requirements</h2>"]
    for title, frame in data["hardware"].items():
        heading = f"FP16 / INT8 / INT4 on {data['constraints'].gpu}" if title == "compare" else title
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        parts.append(f"<p>{html.escape(frame)}</p>" if isinstance(frame, str) else _html_table(frame))
    parts += ["<h2>Constraints</h2>",
              f"<pre>{html.escape(json.dumps(result.request.get('constraints'), indent=2))}</pre>",
              "<h2>Ranked trade-offs</h2>"]
    if not data["measured"]:
        parts.append('<p class="note">Predictions only: no candidate of this study was executed.</p>')
    parts += [_html_table(data["table"].head(TABLE_TOP), list(SHOWN_COLUMNS), table_id="tradeoffs"),
              "<h2>Pareto front</h2>", figure, "<h2>Predictor quality</h2>",
              f"<p>{html.escape(_predictor_text(data))}</p>", "<h2>Recommendation</h2>",
              f'<p class="rec">{html.escape(_deployment_note(result, data))}</p>']
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(_title(result, data))}"
            f"</title><style>{_STYLE}</style></head><body>{_GUARD}{''.join(parts)}{_RENDERED}</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path

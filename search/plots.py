"""Pareto plots of a search: a PNG (matplotlib, Agg) and a self-contained interactive HTML page (plotly).

Compute first, render second (Optuna's visualisation split): :func:`pareto_points` turns the trade-off
table into the points to draw (front, other feasible, infeasible, measured), and each renderer only
draws them. The HTML embeds plotly.js (no CDN), so it opens offline.

Axes: x = an objective column of the table (default ``memory_gib``), y = predicted quality loss (%).
Measured candidates (closed loop) are drawn as separate markers, linked to their prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import InvalidRequestError

if TYPE_CHECKING:
    import pandas as pd

AXIS_LABELS = {
    "memory_gib": "memory per GPU (GiB)",
    "usd_per_1m_tokens": "$ per 1M output tokens",
    "tokens_per_s": "decode tokens/s",
    "speedup": "speedup vs uncompressed",
    "quality_loss_pct": "predicted quality loss (%)",
}


@dataclass(frozen=True)
class ParetoPoints:
    """What a Pareto plot shows, as plain data (testable without drawing)."""

    x: str
    y: str
    front: "pd.DataFrame"
    feasible: "pd.DataFrame"
    infeasible: "pd.DataFrame"
    measured: "pd.DataFrame"


def pareto_points(table: "pd.DataFrame", x: str = "memory_gib", y: str = "quality_loss_pct") -> ParetoPoints:
    """Split the trade-off table into front / other feasible / infeasible / measured points."""
    for column in (x, y):
        if column not in table.columns:
            raise InvalidRequestError(f"cannot plot {column!r}: the table has no such column (columns: "
                                      f"{', '.join(map(str, table.columns))}).")
    usable = table[table[x].notna() & table[y].notna()]
    feasible = usable[usable["feasible"].astype(bool)]
    front = feasible[feasible["pareto"].astype(bool)] if "pareto" in feasible else feasible.iloc[0:0]
    others = feasible.drop(front.index)
    infeasible = usable[~usable["feasible"].astype(bool)]
    return ParetoPoints(x, y, front.sort_values(x), others, infeasible, _measured(table, y))


def _measured(table: "pd.DataFrame", y: str) -> "pd.DataFrame":
    """Rows executed for real, with their measured ``measured_<y>`` (the quality loss is derived from the
    closed loop's ``measured_quality_retained_pct``); failed runs have none and are left out."""
    import pandas as pd

    column = f"measured_{y}"
    if column not in table.columns and y == "quality_loss_pct" and "measured_quality_retained_pct" in table.columns:
        table = table.assign(**{column: 100.0 - pd.to_numeric(table["measured_quality_retained_pct"],
                                                              errors="coerce")})
    if column not in table.columns:
        return table.iloc[0:0]
    values = pd.to_numeric(table[column], errors="coerce")
    return table.assign(**{column: values})[values.notna()]


def plot_pareto_png(table: "pd.DataFrame", path: str | Path, *, x: str = "memory_gib", y: str = "quality_loss_pct",
                    title: str = "fitplan search: predicted trade-offs") -> Path:
    """Write the Pareto plot as a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pareto_points(table, x, y)
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=110)
    if len(points.infeasible):
        axes.scatter(points.infeasible[x], points.infeasible[y], s=12, c="#c8c8c8", label="infeasible")
    if len(points.feasible):
        axes.scatter(points.feasible[x], points.feasible[y], s=16, c="#7fa7d1", label="feasible")
    if len(points.front):
        axes.plot(points.front[x], points.front[y], "-o", c="#d1495b", ms=6, lw=1.5, label="Pareto front")
        for index, (_, row) in enumerate(points.front.head(10).iterrows()):
            # staggered labels: neighbouring front points sit close together
            axes.annotate(str(row.get("strategy", ""))[:32], (row[x], row[y]), fontsize=7,
                          xytext=(6, 8 + 11 * (index % 4)), textcoords="offset points",
                          arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#999999"})
    if len(points.measured):
        axes.scatter(points.measured[x], points.measured[f"measured_{y}"], marker="*", s=120, c="#2e933c",
                     edgecolors="black", linewidths=0.5, label="measured", zorder=5)
        for _, row in points.measured.iterrows():
            axes.plot([row[x], row[x]], [row[y], row[f"measured_{y}"]], c="#2e933c", lw=0.8, ls=":")
    feasible_y = [*points.front[y], *points.feasible[y]]
    if feasible_y and len(points.infeasible):
        # Zoom on the feasible region; infeasible points above it are counted in the legend.
        top = max(max(feasible_y) * 2.0, max(feasible_y) + 2.0)
        hidden = int((points.infeasible[y] > top).sum())
        if hidden:
            axes.set_ylim(min(0.0, min(feasible_y)) - 0.5, top)
            axes.scatter([], [], s=0, label=f"{hidden} infeasible above the range shown")
    axes.set_xlabel(AXIS_LABELS.get(x, x))
    axes.set_ylabel(AXIS_LABELS.get(y, y))
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def pareto_figure(table: "pd.DataFrame", *, x: str = "memory_gib", y: str = "quality_loss_pct",
                  title: str = "fitplan search: predicted trade-offs"):
    """The interactive plotly figure (hover shows each candidate's strategy and figures)."""
    import plotly.graph_objects as go

    points = pareto_points(table, x, y)
    figure = go.Figure()

    def hover(frame: "pd.DataFrame") -> list[str]:
        return [f"{row.get('strategy', '')}<br>{AXIS_LABELS.get(x, x)}: {row[x]:.3g}<br>"
                f"{AXIS_LABELS.get(y, y)}: {row[y]:.3g}" for _, row in frame.iterrows()]

    for frame, name, style in ((points.infeasible, "infeasible", {"color": "#c8c8c8", "size": 6}),
                               (points.feasible, "feasible", {"color": "#7fa7d1", "size": 7}),
                               (points.front, "Pareto front", {"color": "#d1495b", "size": 9})):
        if len(frame):
            figure.add_trace(go.Scatter(x=frame[x], y=frame[y], mode="markers+lines" if name == "Pareto front"
                                        else "markers", name=name, marker=style, text=hover(frame),
                                        hoverinfo="text"))
    if len(points.measured):
        figure.add_trace(go.Scatter(x=points.measured[x], y=points.measured[f"measured_{y}"], mode="markers",
                                    name="measured", marker={"symbol": "star", "size": 14, "color": "#2e933c",
                                                             "line": {"width": 1, "color": "black"}},
                                    text=[f"{text}<br>measured: {value:.3g}" for text, value in
                                          zip(hover(points.measured), points.measured[f"measured_{y}"])],
                                    hoverinfo="text"))
    figure.update_layout(title=title, xaxis_title=AXIS_LABELS.get(x, x), yaxis_title=AXIS_LABELS.get(y, y),
                         template="plotly_white", height=520)
    return figure


def plot_pareto_html(table: "pd.DataFrame", path: str | Path, **kwargs) -> Path:
    """Write the interactive Pareto plot as one self-contained HTML file (plotly.js embedded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pareto_figure(table, **kwargs).write_html(path, include_plotlyjs=True, full_html=True)
    return path

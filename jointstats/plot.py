"""Pictures of a released table (matplotlib, Agg backend, imported only when drawing).

One `by` column gives bars, two a heatmap, three a heatmap per value of the third (facets).
Only released values are drawn: a suppressed cell is hatched grey and labelled "suppressed",
never drawn as zero. Margin lines (`total`) are left out of the picture. The title names the
job; the caption gives the threshold and epsilon.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from jointstats.errors import ConfigError
from jointstats.shares import share_measure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from jointstats.results import Result

PLOT_SUFFIXES = (".png", ".svg")
SUPPRESSED = "suppressed"
NO_VALUE = "n/a"  # released, but this measure has no value (a share whose total is suppressed)
GREY = "#d0d0d0"
TOTAL = "total"


def check_plot_path(path: Path) -> None:
    """Fail before any work when a picture could not be written to `path`."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"cannot draw {Path(path).name}: use .png or .svg")


def _measure(table: pd.DataFrame) -> str:
    for name in ("share", "weighted_count", "count"):
        if name in table:
            return name
    raise ConfigError("the result has no count to draw")


def _text(value: float, measure: str) -> str:
    if measure == "share":
        return f"{value:.1%}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _title(result: Result) -> str:
    job, meta = result.job, result.metadata
    job_id = meta.get("job_id") or _envelope_id(result)
    kind = job.get("kind") or meta.get("kind", "table")
    if "dataset" in job:
        what = f"{kind} of {job['dataset']}"
    elif isinstance(job.get("left"), dict) and isinstance(job.get("right"), dict):
        what = f"{kind}: {job['left'].get('dataset')} x {job['right'].get('dataset')}"
    else:
        what = kind
    return f"job {job_id}: {what}" if job_id else what


def _envelope_id(result: Result) -> str:
    import base64
    import json

    try:
        return str(json.loads(base64.b64decode(str(result.signed["envelope"])))["job_id"])
    except (TypeError, KeyError, ValueError):
        return ""


def _caption(result: Result, measure: str) -> str:
    disclosure = result.metadata.get("disclosure", {}) or {}
    epsilon = disclosure.get("epsilon") or result.metadata.get("epsilon_spent")
    noise = f"ε = {epsilon}" if epsilon else "ε: none (exact counts)"
    cells = result.metadata.get("cells")
    hidden = result.metadata.get("suppressed_cells")
    known = cells is not None and hidden is not None
    count = f"; {hidden} of {cells} cells suppressed" if known else ""
    mode = result.job.get("shares")
    unknown = ""
    if measure == "share" and _released_without_share(result.table):
        unknown = f" · {NO_VALUE}: released, but its total is suppressed"
    if measure == "share" and mode:
        margins = (result.job.get("disclosure") or {}).get("margins")
        base = "released totals" if margins else "the sum of released cells"
        measure = f"{mode} share of {share_measure(result.table)} (over {base})"
    why = f"below min_cell = {disclosure.get('min_cell')}"
    if result.metadata.get("secondary_suppressed"):
        why += " or protecting one that is"
    return f"{measure} · cells {why} suppressed (hatched grey){count}{unknown} · {noise}"


def _released_without_share(table: pd.DataFrame) -> bool:
    return bool((table["share"].isna() & ~table["suppressed"].astype(bool)).any())


def _by_columns(result: Result) -> list[str]:
    measures = {"count", "weighted_count", "sum", "mean", "share", "suppressed"}
    return [c for c in result.table.columns if c not in measures]


def _cells(result: Result, by: list[str]) -> pd.DataFrame:
    """The table without margin lines (any `by` label `total` when the job asked margins)."""
    table = result.table
    margins = bool(result.job.get("disclosure", {}).get("margins")) or bool(
        result.metadata.get("disclosure", {}).get("margins")
    )
    if margins:
        table = table[~(table[by].astype(str) == TOTAL).any(axis=1)]
    return table.reset_index(drop=True)


def _bars(ax: Axes, table: pd.DataFrame, column: str, measure: str) -> None:
    labels = [str(v) for v in table[column]]
    values = pd.to_numeric(table[measure], errors="coerce")
    hidden = table["suppressed"].astype(bool)
    shown = ~hidden & values.notna()
    top = float(values[shown].max()) if shown.any() else 1.0
    top = top if top > 0 else 1.0
    for i, (value, gone) in enumerate(zip(values, hidden, strict=True)):
        if gone:
            ax.bar(i, top, color=GREY, hatch="//", edgecolor="#808080", alpha=0.6)
            ax.text(i, top / 2, SUPPRESSED, ha="center", va="center", rotation=90, fontsize=9)
        elif pd.isna(value):
            ax.text(i, 0, NO_VALUE, ha="center", va="bottom", fontsize=9, color="#606060")
        else:
            ax.bar(i, value, color="#3b75af")
            ax.text(i, value, _text(value, measure), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0)
    ax.set_xlabel(column)
    ax.set_ylabel(measure)
    ax.set_ylim(0, top * 1.15)


def _heatmap(
    ax: Axes, table: pd.DataFrame, rows: str, cols: str, measure: str, scale: tuple[float, float]
) -> Any:
    import numpy as np
    from matplotlib.patches import Rectangle

    row_labels = list(dict.fromkeys(str(v) for v in table[rows]))
    col_labels = list(dict.fromkeys(str(v) for v in table[cols]))
    grid = np.full((len(row_labels), len(col_labels)), np.nan)
    hidden = np.zeros(grid.shape, dtype=bool)
    for _, line in table.iterrows():
        i, j = row_labels.index(str(line[rows])), col_labels.index(str(line[cols]))
        value = pd.to_numeric(line[measure], errors="coerce")
        if bool(line["suppressed"]):
            hidden[i, j] = True
        elif not pd.isna(value):
            grid[i, j] = float(value)
    image = ax.imshow(
        np.ma.masked_invalid(grid), cmap="Blues", vmin=scale[0], vmax=scale[1], aspect="auto"
    )
    middle = (scale[0] + scale[1]) / 2
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if hidden[i, j]:
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=GREY, hatch="//",
                              edgecolor="#808080", linewidth=0)
                )  # fmt: skip
                ax.text(j, i, SUPPRESSED, ha="center", va="center", fontsize=8, color="#333333")
            elif math.isnan(grid[i, j]):
                ax.text(j, i, NO_VALUE, ha="center", va="center", fontsize=8, color="#606060")
            else:
                color = "white" if grid[i, j] > middle else "black"
                ax.text(j, i, _text(grid[i, j], measure), ha="center", va="center",
                        fontsize=9, color=color)  # fmt: skip
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30 if len(col_labels) > 5 else 0)
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(cols)
    ax.set_ylabel(rows)
    return image


def _scale(table: pd.DataFrame, measure: str) -> tuple[float, float]:
    values = pd.to_numeric(table[measure], errors="coerce")[~table["suppressed"].astype(bool)]
    values = values.dropna()
    if values.empty:
        return 0.0, 1.0
    high = float(values.max())
    return min(0.0, float(values.min())), high if high > 0 else 1.0


def draw(result: Result) -> Figure:
    """The picture of a released table as a matplotlib Figure (Agg, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by = _by_columns(result)
    if not 1 <= len(by) <= 3:
        raise ConfigError(f"--plot draws tables with one to three `by` columns, not {len(by)}")
    table = _cells(result, by)
    measure = _measure(table)
    if len(by) == 1:
        figure = Figure(figsize=(max(6.0, 0.8 * len(table) + 2), 4.8), layout="constrained")
        _bars(figure.add_subplot(), table, by[0], measure)
    else:
        facets = list(dict.fromkeys(str(v) for v in table[by[2]])) if len(by) == 3 else [None]
        rows = len(set(table[by[0]].astype(str)))
        cols = len(set(table[by[1]].astype(str)))
        width = min(6.0, 1.2 * cols + 2.5)
        figure = Figure(
            figsize=(width * len(facets) + 1.2, max(3.5, 0.6 * rows + 2.2)), layout="constrained"
        )
        axes = figure.subplots(1, len(facets), squeeze=False)[0]
        scale = _scale(table, measure)
        image = None
        for ax, facet in zip(axes, facets, strict=True):
            part = table if facet is None else table[table[by[2]].astype(str) == facet]
            image = _heatmap(ax, part, by[0], by[1], measure, scale)
            if facet is not None:
                ax.set_title(f"{by[2]} = {facet}", fontsize=10)
        figure.colorbar(image, ax=list(axes), label=measure, shrink=0.9)
    FigureCanvasAgg(figure)
    figure.suptitle(_title(result), fontsize=12)
    caption = textwrap.fill(_caption(result, measure), width=110)  # a long line widens the PNG
    figure.text(0.5, 0.0, caption, ha="center", va="top", fontsize=8.5)
    return figure


def save(result: Result, path: Path) -> Path:
    """Draw the released table into `path` (.png or .svg) and return the path."""
    check_plot_path(path)
    figure = draw(result)
    figure.savefig(path, dpi=150, bbox_inches="tight", pad_inches=0.25)
    return path

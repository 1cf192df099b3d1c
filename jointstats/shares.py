"""Shares of a released table: public post-processing of released values only.

`shares = "row" | "column" | "total"` in a crosstab job adds a `share` column when the client
builds the table from the verified result. Nothing here touches data or MPC: a share is a
ratio of two released numbers, so it reveals nothing beyond the released table.

- The numerator is the cell's `weighted_count` when the job has a `weight`, else its `count`.
- "row": within the cells with the same value of the first `by` column; "column": the same
  value of the second `by` column; "total": within the whole table.
- With `margins`, the denominator is the released total (the row's, column's or grand total).
- Without `margins`, the denominator is the sum of the *released* cells of the group, so the
  shares of a group's released cells add up to 1; suppressed cells are left out of it.
- A suppressed cell, a suppressed or zero denominator, gives an empty share.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

MODES = ("row", "column", "total")
TOTAL = "total"


def share_measure(table: pd.DataFrame) -> str:
    return "weighted_count" if "weighted_count" in table else "count"


def _group_key(labels: tuple[Any, ...], mode: str, width: int) -> tuple[Any, ...]:
    """The denominator's labels (as a margin line would show them) for a line's labels."""
    if mode == "row":
        return (labels[0], *([TOTAL] * (width - 1)))
    if mode == "column":
        return (TOTAL, labels[1], *([TOTAL] * (width - 2)))
    return (TOTAL,) * width


def add_shares(table: pd.DataFrame, by: list[str], mode: str, margins: bool) -> pd.DataFrame:
    """The table with a `share` column (before `suppressed`), from released values only."""
    if mode not in MODES:
        raise ValueError(f"shares must be one of {', '.join(MODES)}")
    measure = share_measure(table)
    values = pd.to_numeric(table[measure], errors="coerce").astype("float64")
    released = ~table["suppressed"].astype(bool) & values.notna()
    labels = [tuple(row) for row in table[by].astype(str).itertuples(index=False)]
    keys = [_group_key(label, mode, len(by)) for label in labels]
    denominators: dict[tuple[Any, ...], float] = {}
    if margins:
        for label, value, ok in zip(labels, values, released, strict=True):
            denominators[label] = float(value) if ok else float("nan")
    else:
        for key, value, ok in zip(keys, values, released, strict=True):
            denominators[key] = denominators.get(key, 0.0) + (float(value) if ok else 0.0)
    shares = []
    for key, value, ok in zip(keys, values, released, strict=True):
        denominator = denominators.get(key, float("nan"))
        usable = ok and pd.notna(denominator) and denominator > 0
        shares.append(float(value) / denominator if usable else float("nan"))
    out = table.copy()
    out.insert(list(out.columns).index("suppressed"), "share", pd.Series(shares, dtype="float64"))
    return out

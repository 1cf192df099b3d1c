"""Independent plaintext answers (pandas) to check released tables against."""

from __future__ import annotations

import itertools

import pandas as pd


def expected_crosstab(
    frame: pd.DataFrame,
    by: list[str],
    domains: dict[str, list[str]],
    min_cell: int,
    value: str | None = None,
    bounds: tuple[float, float] | None = None,
    weight: str | None = None,
) -> pd.DataFrame:
    """Full product of the domains in domain order, with counts (and clipped sums, and the
    sum of `weight` as `weighted_count`)."""
    frame = frame.copy()
    for column in by:
        frame[column] = frame[column].astype(str)
    if value is not None and bounds is not None:
        frame[value] = frame[value].clip(*bounds)
    grouped = frame.groupby(by).agg(
        count=(by[0], "size"),
        **({"sum": (value, "sum")} if value else {}),
        **({"weighted_count": (weight, "sum")} if weight else {}),
    )
    cells = pd.DataFrame(list(itertools.product(*(domains[c] for c in by))), columns=by)
    table = cells.merge(grouped.reset_index(), on=by, how="left")
    table["count"] = table["count"].fillna(0).astype(int)
    if weight:
        table["weighted_count"] = table["weighted_count"].fillna(0.0)
    table["suppressed"] = table["count"] < min_cell
    return table

"""Independent plaintext answers (pandas) to check released tables against."""

from __future__ import annotations

import itertools

import numpy as np
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


def attacker_widths(
    table: pd.DataFrame, by: list[str], total: int | None = None, label: str = "total"
) -> list[float]:
    """The attacker's linear programme, written independently of jointstats: for every
    suppressed line of a released table (cells and, where present, margins labelled `label`),
    max - min of its value subject to the released lines, every additive identity between the
    lines, a public grand total `total` (a linked table's n) and non-negativity."""
    from scipy.optimize import linprog

    keys = [tuple(str(v) for v in row) for row in table[by].itertuples(index=False)]
    hidden = [i for i, s in enumerate(table["suppressed"]) if s]
    if not hidden:
        return []
    position = {i: j for j, i in enumerate(hidden)}
    value = {i: float(c) for i, c in enumerate(table["count"]) if i not in position}
    rows, rhs = [], []

    def identity(whole: int, parts: list[int]) -> None:
        row, constant = np.zeros(len(hidden)), 0.0
        for i, sign in [(whole, -1.0)] + [(p, 1.0) for p in parts]:
            if i in position:
                row[position[i]] += sign
            else:
                constant -= sign * value[i]
        if row.any():
            rows.append(row)
            rhs.append(constant)

    cells = [i for i, k in enumerate(keys) if label not in k]
    for whole, key in enumerate(keys):
        if label in key:  # a margin: the sum of the cells that agree on its other labels
            parts = [
                i for i in cells if all(w in (label, c) for w, c in zip(key, keys[i], strict=True))
            ]
            identity(whole, parts)
    if total is not None:
        row = np.array([1.0 if i in cells else 0.0 for i in hidden])
        rows.append(row)
        rhs.append(total - sum(value[i] for i in cells if i not in position))
    widths = []
    for i in hidden:
        if not rows:
            widths.append(float("inf"))
            continue
        c = np.zeros(len(hidden))
        c[position[i]] = 1.0
        low = linprog(c, A_eq=np.array(rows), b_eq=rhs, bounds=(0, None), method="highs")
        high = linprog(-c, A_eq=np.array(rows), b_eq=rhs, bounds=(0, None), method="highs")
        upper = float("inf") if high.status == 3 else -high.fun
        widths.append(upper - low.fun)
    return widths


def assert_protected_release(
    result_table: pd.DataFrame,
    expected: pd.DataFrame,
    by: list[str],
    min_cell: int,
    total: int | None = None,
) -> None:
    """A released table against the plaintext: every small cell suppressed, every released
    cell exact, and no suppressed line narrowed below min_cell values by the attacker's LP."""
    cells = result_table[~result_table[by].isin(["total"]).any(axis=1)].reset_index(drop=True)
    assert (cells["suppressed"] | ~expected["suppressed"]).all(), "a small cell was released"
    released = ~cells["suppressed"]
    assert list(cells.loc[released, "count"]) == list(expected.loc[released, "count"])
    widths = attacker_widths(result_table, by, total)
    assert all(w >= min_cell - 1 - 1e-6 for w in widths), widths

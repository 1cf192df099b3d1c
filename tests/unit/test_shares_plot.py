"""Shares (public post-processing of released values) and pictures of released tables."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import ConfigError, JobError
from jointstats.protocols.crosstab import PROTOCOL
from jointstats.results import Result

ROWS = ["north", "south", "east"]
MARGIN_LINES = [  # a 2 x 2 table with margins whose north total is suppressed
    ("north", "idp", 20, False), ("north", "returnee", None, True),
    ("south", "idp", 30, False), ("south", "returnee", 40, False),
    ("north", "total", None, True), ("south", "total", 70, False),
    ("total", "idp", 50, False), ("total", "returnee", 45, False),
    ("total", "total", 115, False),
]  # fmt: skip
COLS = ["idp", "returnee"]


def _released(by: list[str], domains: list[list[str]], seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cells = list(itertools.product(*domains))
    counts = rng.integers(0, 60, len(cells))
    table = pd.DataFrame(cells, columns=by)
    table["count"] = pd.array(counts, dtype="Int64")
    table["suppressed"] = counts < 10
    table.loc[table["suppressed"], "count"] = pd.NA
    return table


def _result(table: pd.DataFrame, job: dict, metadata: dict | None = None) -> Result:
    envelope = {"job": job, "job_id": "j-test1234"}
    signed = {"envelope": base64.b64encode(json.dumps(envelope).encode()).decode()}
    rows = table.astype(object).where(table.notna(), None).to_json(orient="values")
    doc = {
        "columns": list(table.columns),
        "rows": json.loads(rows),
        "metadata": metadata or {"disclosure": {"min_cell": 10}, "cells": len(table)},
        **signed,
    }
    return Result.from_json(json.dumps(doc))


def _pandas_shares(table: pd.DataFrame, group: list[str]) -> pd.Series:
    """Independent plaintext: released counts over the sum of the group's released counts."""
    released = table["count"].astype("float64").where(~table["suppressed"])
    if group:
        denominator = released.fillna(0).groupby([table[c] for c in group]).transform("sum")
    else:
        denominator = pd.Series(released.fillna(0).sum(), index=table.index)
    return released / denominator.where(denominator > 0)


@pytest.mark.parametrize(("mode", "group"), [("row", ["a"]), ("column", ["b"]), ("total", [])])
def test_shares_without_margins_match_pandas_over_released_cells(mode: str, group: list) -> None:
    table = _released(["a", "b"], [ROWS, COLS])
    assert table["suppressed"].any() and not table["suppressed"].all()
    result = _result(table, {"kind": "crosstab", "by": ["a", "b"], "shares": mode})
    shares = result.table["share"]
    expected = _pandas_shares(table, group)
    assert shares.isna().equals(expected.isna())
    assert np.allclose(shares.dropna(), expected.dropna())
    assert shares[table["suppressed"]].isna().all()
    assert list(result.table.columns) == ["a", "b", "count", "share", "suppressed"]


def test_shares_with_margins_use_released_totals_and_empty_when_a_total_is_suppressed() -> None:
    table = pd.DataFrame(MARGIN_LINES, columns=["a", "b", "count", "suppressed"])
    job = {"kind": "crosstab", "by": ["a", "b"], "disclosure": {"margins": True}}
    row = _result(table, {**job, "shares": "row"}).table["share"].tolist()
    assert np.isnan(row[0]) and np.isnan(row[1])  # north's total is suppressed
    assert row[2:4] == pytest.approx([30 / 70, 40 / 70]) and row[5] == pytest.approx(1.0)
    column = _result(table, {**job, "shares": "column"}).table["share"].tolist()
    assert column[0] == pytest.approx(20 / 50) and column[3] == pytest.approx(40 / 45)
    total = _result(table, {**job, "shares": "total"}).table["share"].tolist()
    assert total[2] == pytest.approx(30 / 115) and total[8] == pytest.approx(1.0)


def test_shares_are_written_to_csv_json_and_parquet(tmp_path: Path) -> None:
    table = _released(["a", "b"], [ROWS, COLS])
    result = _result(table, {"kind": "crosstab", "by": ["a", "b"], "shares": "total"})
    for name in ("t.csv", "t.json", "t.parquet"):
        result.write(tmp_path / name)
    assert "share" in pd.read_csv(tmp_path / "t.csv").columns
    assert "share" in pd.read_parquet(tmp_path / "t.parquet").columns
    assert "share" in json.loads((tmp_path / "t.json").read_text())["table"][0]


@pytest.mark.parametrize(
    ("shares", "by", "message"),
    [("rows", ["region", "status"], "must be"), ("row", ["region"], "two `by` columns")],
)
def test_shares_field_is_validated(shares: str, by: list, message: str) -> None:
    job = {"kind": "crosstab", "dataset": "d", "by": by, "shares": shares,
           "domains": {"region": ROWS, "status": COLS}}  # fmt: skip
    job["domains"] = {c: job["domains"][c] for c in by}
    with pytest.raises(JobError, match=message):
        PROTOCOL.parse(job)


@pytest.mark.parametrize(("n_by", "suffix"), [(1, ".png"), (2, ".svg"), (3, ".png"), (2, ".png")])
def test_plot_draws_each_shape_and_marks_suppressed_cells(
    n_by: int, suffix: str, tmp_path: Path
) -> None:
    by = ["region", "status", "sex"][:n_by]
    domains = [ROWS, COLS, ["f", "m"]][:n_by]
    table = _released(by, domains, seed=5)
    assert table["suppressed"].any()
    job = {"kind": "crosstab", "dataset": "households", "by": by}
    meta = {"disclosure": {"min_cell": 10, "epsilon": None}, "cells": len(table)}
    result = _result(table, job, meta)
    figure = result.plot()
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert texts.count("suppressed") == int(table["suppressed"].sum())
    assert "0" not in texts
    released = table.loc[~table["suppressed"], "count"]
    assert sorted(texts.count(f"{int(c):,}") > 0 for c in released) == [True] * len(released)
    assert "job j-test1234: crosstab of households" in figure.texts[0].get_text() or any(
        "job j-test1234" in t.get_text() for t in figure.texts
    )
    assert any("min_cell = 10" in t.get_text() and "ε" in t.get_text() for t in figure.texts)
    path = result.plot(tmp_path / f"t{n_by}{suffix}")
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(b"\x89PNG\r\n\x1a\n") if suffix == ".png" else b"<svg" in data[:2000]


def test_plot_refuses_other_suffixes(tmp_path: Path) -> None:
    result = _result(_released(["a"], [ROWS]), {"kind": "crosstab", "by": ["a"]})
    with pytest.raises(ConfigError, match="use .png or .svg"):
        result.plot(tmp_path / "t.pdf")


def test_plot_marks_a_released_cell_without_a_share_as_na_not_suppressed(tmp_path: Path) -> None:
    table = pd.DataFrame(MARGIN_LINES, columns=["a", "b", "count", "suppressed"])
    job = {"kind": "crosstab", "by": ["a", "b"], "shares": "row", "disclosure": {"margins": True}}
    figure = _result(table, job).plot()
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert texts.count("suppressed") == 1  # north/returnee only: north/idp was released
    assert texts.count("n/a") == 1
    captions = " ".join(t.get_text().replace("\n", " ") for t in figure.texts)
    assert "n/a: released, but its total is suppressed" in captions
    _result(table, job).plot(tmp_path / "na.png")

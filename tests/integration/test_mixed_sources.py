"""Pooled crosstab over a CSV node, a Parquet-folder node and a PostgreSQL node (a real server),
survey weights against pandas, and every kind of bad input failing with one value-free line."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import JOB, REGIONS, STATUSES, make_households
from tests.pg import PostgresServer, free_port
from tests.plaintext import expected_crosstab

SECRET = "SECRET-VALUE-123"
NODES = ("csvnode", "pqnode", "pgnode")
DB_ENV = "HOUSEHOLDS_DB_URL"
FAILING_QUERY = (  # fails only when rows are read; PostgreSQL's message would quote SECRET
    "SELECT region, region AS displacement_status FROM failing WHERE CAST(secret AS int) > 0"
)
DECLARED = {"region": "text", "displacement_status": "text", "income": "number", "w": "number"}


def _frame(rng: np.random.Generator, rows: int, balanced: bool = False) -> pd.DataFrame:
    frame = make_households(rng, rows)
    if balanced:  # every cell large: nothing suppressed, margins all released
        frame["region"] = rng.choice(REGIONS, rows)
        frame["displacement_status"] = rng.choice(STATUSES, rows)
    frame["w"] = np.round(rng.uniform(0.2, 3.0, rows), 3)
    return frame


def _write_files(root: Path, frames: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Good copies of one dataset at each node: CSV (;), two Parquet files, a table."""
    csv = root / "csvnode.csv"
    frames["csvnode"].to_csv(csv, sep=";", index=False)
    folder = root / "pqnode"
    folder.mkdir()
    half = len(frames["pqnode"]) // 2
    frames["pqnode"].iloc[:half].to_parquet(folder / "part-1.parquet")
    frames["pqnode"].iloc[half:].to_parquet(folder / "part-2.parquet")
    return {
        "csvnode": {"path": str(csv), "delimiter": ";", "columns": DECLARED},
        "pqnode": {"path": str(folder), "format": "parquet"},
        "pgnode": {"url_env": DB_ENV, "table": "households", "columns": DECLARED},
    }


def _bad_inputs(root: Path, postgres: PostgresServer, good: dict[str, dict]) -> dict[str, tuple]:
    """case -> (guilty node, its dataset entry); the other nodes serve good data."""
    rows = "region;displacement_status;income;w\n" + "north;idp;10;1.0\n" * 20
    files = {
        "empty": b"",
        "not_csv": b"\x89PNG\r\n\x1a\n\x00\x00" + SECRET.encode() + bytes(range(256)) * 4,
        "latin1": (rows + f"north;{SECRET}\xe9;10;1.0\n").encode("latin-1"),
        "null_keys": (rows + ";idp;10;1.0\n" * 3).encode(),
        "text_income": (rows + f"north;idp;{SECRET};1.0\n").encode(),
    }
    for name, content in files.items():
        (root / f"{name}.csv").write_bytes(content)
    (root / "corrupt.parquet").write_bytes(b"PAR1" + SECRET.encode() * 20)
    bad_weights = pd.DataFrame({"region": ["north"] * 3, "displacement_status": ["idp"] * 3})
    bad_weights["income"], bad_weights["w"] = 10, [1.0, -2.0, np.nan]
    (root / "bad_weights").mkdir()
    bad_weights.to_parquet(root / "bad_weights" / "part.parquet")
    postgres.load(
        "outside", pd.DataFrame({"region": ["north", SECRET], "displacement_status": "idp"})
    )
    postgres.load("failing", pd.DataFrame({"region": ["north"], "secret": [SECRET]}))

    def csv(name: str, **options) -> tuple:
        return "csvnode", {**good["csvnode"], "path": str(root / f"{name}.csv"), **options}

    nobody_listens = f"postgresql://reader@127.0.0.1:{free_port()}/survey"
    return {
        "empty": csv("empty"),
        "not_csv": csv("not_csv"),
        "latin1": csv("latin1"),
        "null_keys": csv("null_keys"),
        "text_income": csv("text_income", columns={}),
        "declared_number": csv("text_income"),
        "corrupt_parquet": ("pqnode", {"path": str(root / "corrupt.parquet")}),
        "bad_weights": ("pqnode", {"path": str(root / "bad_weights"), "format": "parquet"}),
        "outside": ("pgnode", {"url_env": DB_ENV, "table": "outside"}),
        "db_down": ("pgnode", {"url": nobody_listens, "table": "households"}),
        "query_fails": ("pgnode", {"url_env": DB_ENV, "query": FAILING_QUERY}),
    }


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, postgres: PostgresServer) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(7)
    frames = {"csvnode": _frame(rng, 240), "pqnode": _frame(rng, 160), "pgnode": _frame(rng, 200)}
    balanced = {n: _frame(rng, 300, balanced=True) for n in NODES}
    good = _write_files(root, frames)
    (root / "balanced").mkdir()
    good_balanced = _write_files(root / "balanced", balanced)
    postgres.load("households", frames["pgnode"])
    postgres.load("balanced", balanced["pgnode"])
    good_balanced["pgnode"]["table"] = "balanced"
    bad = _bad_inputs(root, postgres, good)
    datasets: dict[str, dict] = {
        n: {"households": good[n], "balanced": good_balanced[n]} for n in NODES
    }
    for case, (guilty, entry) in bad.items():
        for node in NODES:
            datasets[node][case] = entry if node == guilty else good[node]
    env = {DB_ENV: postgres.url()}
    nodes = [LocalNode(n, datasets[n], env=env if n == "pgnode" else {}) for n in NODES]
    with LocalFederation(nodes, root / "fed", session_timeout=60) as fed:
        yield fed, frames, balanced, bad


def _check_counts(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(table["suppressed"]) == list(expected["suppressed"])
    released = ~expected["suppressed"]
    assert list(table.loc[released, "count"]) == list(expected.loc[released, "count"])


def test_csv_parquet_and_postgres_nodes_pool_to_the_plaintext_answer(mixed):
    fed, frames, _, _ = mixed
    job = {**JOB, "sum": "income", "bounds": [0, 2000]}
    result = fed.client.run(job, timeout=120)
    pooled = pd.concat(frames.values())
    expected = expected_crosstab(pooled, JOB["by"], JOB["domains"], 10, "income", (0, 2000))
    assert expected["suppressed"].any() and not expected["suppressed"].all()
    _check_counts(result.table, expected)
    released = ~expected["suppressed"]
    np.testing.assert_allclose(
        result.table.loc[released, "sum"].to_numpy(float), expected.loc[released, "sum"]
    )
    assert sorted(result.metadata["inputs"]) == sorted(NODES)


def test_weighted_counts_equal_pandas_and_suppression_uses_unweighted_counts(mixed):
    fed, frames, _, _ = mixed
    job = {**JOB, "weight": "w"}
    result = fed.client.run(job, timeout=120)
    table = result.table
    assert list(table.columns) == [*JOB["by"], "count", "weighted_count", "suppressed"]
    pooled = pd.concat(frames.values())
    expected = expected_crosstab(pooled, JOB["by"], JOB["domains"], 10, weight="w")
    _check_counts(table, expected)
    released = ~expected["suppressed"]
    np.testing.assert_allclose(
        table.loc[released, "weighted_count"].to_numpy(float),
        expected.loc[released, "weighted_count"],
        atol=1e-5,
    )
    assert table.loc[~released, "weighted_count"].isna().all()
    # suppression follows the count, not the (here larger) weighted count
    assert (expected["suppressed"] & (expected["weighted_count"] >= 10)).any()


def test_weighted_margins(mixed):
    fed, _, balanced, _ = mixed
    job = {**JOB, "dataset": "balanced", "weight": "w", "by": ["region"]}
    job = copy.deepcopy({**job, "domains": {"region": REGIONS}})
    job["disclosure"]["margins"] = True
    table = fed.client.run(job, timeout=120).table.set_index("region")
    assert not table["suppressed"].any()
    pooled = pd.concat(balanced.values())
    by_region = pooled.groupby("region")["w"].sum()
    np.testing.assert_allclose(table.loc[REGIONS, "weighted_count"], by_region[REGIONS], atol=1e-5)
    assert table.loc["total", "count"] == len(pooled)
    assert table.loc["total", "weighted_count"] == pytest.approx(pooled["w"].sum(), abs=1e-5)


BAD_INPUTS = [  # case, column named in the message (or None), message
    ("empty", None, "is empty"),
    ("not_csv", None, "is not a CSV file"),
    ("latin1", None, "is not valid utf-8 text"),
    ("null_keys", "region", "column region: empty values"),
    ("text_income", "income", "column income: non-numeric values"),
    ("declared_number", "income", "declared number but the data holds text"),
    ("corrupt_parquet", None, "is not a valid Parquet file"),
    ("bad_weights", "w", "weights that are empty, not a number, negative or infinite"),
    ("outside", "region", "column region: values outside the declared domain"),
    ("db_down", None, "cannot connect to the database (check url / that the server is up)"),
    ("query_fails", None, "the database refused the query (SQLSTATE 22P02"),
]


def _bad_job(case: str) -> dict:
    job = {**JOB, "dataset": case}
    if case in ("text_income", "declared_number"):
        job["sum"], job["bounds"] = "income", [0, 100]
    if case == "bad_weights":
        job["weight"] = "w"
    return job


def test_every_bad_input_fails_with_one_value_free_line(mixed):
    """All cases run at once (they are independent jobs); each names node, dataset, column."""
    fed, _, _, bad = mixed
    submitted = {case: fed.client.submit(_bad_job(case)) for case, _, _ in BAD_INPUTS}
    for case, column, message in BAD_INPUTS:
        with pytest.raises(JobFailed) as failure:
            fed.client.wait(submitted[case], timeout=120)
        reason = str(failure.value)
        assert message in reason, case
        assert f"node {bad[case][0]}: dataset {case}" in reason, reason
        assert column is None or f"column {column}" in reason, reason
        status = fed.client.status(submitted[case])
        shown = [reason, status.reason, *(r for _, r in status.nodes.values())]
        assert all(SECRET not in text and "\n" not in text for text in shown), shown
        assert all("Traceback" not in text for text in shown), shown

"""A Spark-backed node (pyspark in local mode, a Parquet folder) through a real federation:
a pooled crosstab with [where], [bins] and weights beside a CSV node, a linked crosstab of the
Spark node's registry against the CSV node's survey (keys normalised); released tables checked
against pandas. (Value-free errors of a Spark dataset: tests/unit/test_spark_source.py.)

One federation serves both jobs, one after the other: each starts a Spark JVM in the Spark
node's session worker, and the other parties wait for a party's local step up to the session
timeout (120 s here; it used to be a fixed 30 s, which a cold JVM on two busy cores exceeded)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from jointstats.results import Result
from tests.plaintext import expected_crosstab
from tests.system import need_java

REGIONS = ["north", "south", "east", "west"]
STATUSES = ["idp", "returnee", "host"]
BANDS = ["0-18", "18-60", "60-80"]
SPARK_CONF = {
    "spark.driver.memory": "512m",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}
POOLED: dict = {
    "kind": "crosstab",
    "dataset": "people",
    "by": ["region", "age"],
    "weight": "w",
    "where": {"status": ["idp", "returnee"], "age": {"max": 79}},
    "bins": {"age": [0, 18, 60, 80]},
    "domains": {"region": REGIONS},
    "disclosure": {"min_cell": 10},
}
LINKED: dict = {
    "kind": "linked_crosstab",
    "helper": "jips",
    "left": {"node": "lake", "dataset": "people", "key": "id", "by": ["age"],
             "normalize": ["casefold", "strip"]},
    "right": {"node": "ngo", "dataset": "people", "key": "id", "by": ["status"]},
    "where": {"age": {"max": 79}, "status": ["idp", "returnee"]},
    "bins": {"age": [0, 18, 60, 80]},
    "domains": {"status": ["idp", "returnee"]},
    "disclosure": {"min_cell": 5},
}  # fmt: skip


def _people(rng: np.random.Generator, ids: np.ndarray) -> pd.DataFrame:
    rows = len(ids)
    return pd.DataFrame(
        {
            "id": [f"p{i:04d}" for i in ids],
            "region": rng.choice(REGIONS, rows, p=[0.5, 0.3, 0.17, 0.03]),
            "age": rng.integers(0, 100, rows),
            "status": rng.choice(STATUSES, rows, p=[0.5, 0.3, 0.2]),
            "w": np.round(rng.uniform(0.2, 3.0, rows), 3),
        }
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """`lake`: Spark over a folder of two Parquet files (ids written as the registry keeps
    them, upper case and padded); `ngo`: a CSV file; `jips`: compute-only, the helper."""
    need_java()
    root = tmp_path_factory.mktemp("spark-fed")
    rng = np.random.default_rng(2026)
    people = rng.permutation(1500)
    lake, ngo = _people(rng, people[:700]), _people(rng, people[300:900])
    (root / "lake").mkdir()
    stored = lake.assign(id=[f" {i.upper()} " for i in lake["id"]])
    stored.iloc[:350].to_parquet(root / "lake" / "part-0.parquet")
    stored.iloc[350:].to_parquet(root / "lake" / "part-1.parquet")
    ngo.to_csv(root / "ngo.csv", index=False)
    spark = {"engine": "spark", "master": "local[1]", "conf": SPARK_CONF}
    nodes = [
        LocalNode("lake", {"people": {**spark, "path": str(root / "lake")}}),
        LocalNode("ngo", {"people": root / "ngo.csv"}),
        LocalNode("jips"),
    ]
    with LocalFederation(nodes, root / "fed", session_timeout=120) as fed:
        yield fed, lake, ngo


def _banded(frame: pd.DataFrame) -> pd.DataFrame:
    kept = frame[frame["age"] <= 79].copy()
    kept["age"] = pd.cut(kept["age"], [0, 18, 60, 80], right=False, labels=BANDS).astype(str)
    return kept


def _run(fed: LocalFederation, job: dict) -> Result:
    """Run a job; a failure shows the Spark node's log (why its JVM did not start, say)."""
    try:
        return fed.client.run(job, timeout=180)
    except JobFailed as exc:
        tail = fed.log("lake").read_text(errors="replace")[-6000:]
        raise AssertionError(f"{exc}\n--- lake's log (end) ---\n{tail}") from None


def test_a_spark_node_in_a_pooled_and_a_linked_crosstab(federation):
    fed, lake, ngo = federation
    result = _run(fed, POOLED)
    pooled = pd.concat([lake, ngo])
    kept = _banded(pooled[pooled["status"].isin(["idp", "returnee"])])
    domains = {"region": REGIONS, "age": BANDS}
    expected = expected_crosstab(kept, POOLED["by"], domains, 10, weight="w")
    assert expected["suppressed"].any() and not expected["suppressed"].all()
    table = result.table
    assert list(table["suppressed"]) == list(expected["suppressed"])
    released = ~expected["suppressed"]
    assert list(table.loc[released, "count"]) == list(expected.loc[released, "count"])
    np.testing.assert_allclose(
        table.loc[released, "weighted_count"].to_numpy(float),
        expected.loc[released, "weighted_count"],
        atol=1e-5,
    )
    assert sorted(result.metadata["inputs"]) == ["lake", "ngo"]

    result = _run(fed, LINKED)
    right = ngo[ngo["status"].isin(["idp", "returnee"])]
    merged = _banded(lake)[["id", "age"]].merge(right[["id", "status"]], on="id")
    domains = {"age": BANDS, "status": ["idp", "returnee"]}
    expected = expected_crosstab(merged, ["age", "status"], domains, min_cell=5)
    assert result.metadata["matched"] == len(merged) > 0  # ids matched only once normalised
    released = ~expected["suppressed"]
    assert released.any()
    assert list(result.table["suppressed"]) == list(expected["suppressed"])
    assert list(result.table.loc[released, "count"]) == list(expected.loc[released, "count"])

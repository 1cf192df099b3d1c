"""The Spark node's case, shared by the local-mode and the Spark Connect federation tests: a
registry `lake` (Parquet folder, ids stored upper case and padded) and a survey `ngo` (CSV)
about partly the same people, a pooled and a linked job over them, and the checks of each
released table against pandas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation
from jointstats.results import Result
from tests.plaintext import expected_crosstab

REGIONS = ["north", "south", "east", "west"]
STATUSES = ["idp", "returnee", "host"]
BANDS = ["0-18", "18-60", "60-80"]
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


def write_people(root: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`root/lake/` (two Parquet files) and `root/ngo.csv`; the frames as pandas sees them."""
    rng = np.random.default_rng(seed)
    people = rng.permutation(1500)
    lake, ngo = _people(rng, people[:700]), _people(rng, people[300:900])
    (root / "lake").mkdir()
    stored = lake.assign(id=[f" {i.upper()} " for i in lake["id"]])
    stored.iloc[:350].to_parquet(root / "lake" / "part-0.parquet")
    stored.iloc[350:].to_parquet(root / "lake" / "part-1.parquet")
    ngo.to_csv(root / "ngo.csv", index=False)
    return lake, ngo


def _banded(frame: pd.DataFrame) -> pd.DataFrame:
    kept = frame[frame["age"] <= 79].copy()
    kept["age"] = pd.cut(kept["age"], [0, 18, 60, 80], right=False, labels=BANDS).astype(str)
    return kept


def run_job(fed: LocalFederation, job: dict) -> Result:
    """Run a job; a failure shows the Spark node's log (why its JVM did not start, say)."""
    try:
        return fed.client.run(job, timeout=180)
    except JobFailed as exc:
        tail = fed.log("lake").read_text(errors="replace")[-6000:]
        raise AssertionError(f"{exc}\n--- lake's log (end) ---\n{tail}") from None


def check_pooled(result: Result, lake: pd.DataFrame, ngo: pd.DataFrame) -> None:
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


def check_linked(result: Result, lake: pd.DataFrame, ngo: pd.DataFrame) -> None:
    right = ngo[ngo["status"].isin(["idp", "returnee"])]
    merged = _banded(lake)[["id", "age"]].merge(right[["id", "status"]], on="id")
    domains = {"age": BANDS, "status": ["idp", "returnee"]}
    expected = expected_crosstab(merged, ["age", "status"], domains, min_cell=5)
    assert result.metadata["matched"] == len(merged) > 0  # ids matched only once normalised
    released = ~expected["suppressed"]
    assert released.any()
    assert list(result.table["suppressed"]) == list(expected["suppressed"])
    assert list(result.table.loc[released, "count"]) == list(expected.loc[released, "count"])

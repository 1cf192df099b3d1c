"""examples/ are runnable: each is run as its README says and checked against pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import REPO
from tests.plaintext import expected_crosstab


def test_pooled_example(tmp_path: Path) -> None:
    example = REPO / "examples" / "pooled"
    nodes = [f"--node={a}=data/{a}/households.csv" for a in ("unhcr", "drc", "nrc")]
    exe = str(Path(sys.executable).with_name("jointstats"))
    out = tmp_path / "table.csv"
    run = subprocess.run(
        [exe, "local", "job.toml", *nodes, "--out", str(out)],
        cwd=example, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    frame = pd.concat(
        pd.read_csv(example / f"data/{a}/households.csv") for a in ("unhcr", "drc", "nrc")
    )
    domains = {
        "region": ["north", "south", "east", "west"],
        "displacement_status": ["idp", "returnee", "host"],
    }
    expected = expected_crosstab(frame, list(domains), domains, 10, "income", (0, 5000))
    table = pd.read_csv(out)
    assert list(table["suppressed"]) == list(expected["suppressed"])
    assert table.loc[table["region"] == "west", "suppressed"].all()
    released = ~expected["suppressed"]
    assert list(table.loc[released, "count"].astype(int)) == list(expected.loc[released, "count"])
    assert (abs(table.loc[released, "sum"] - expected.loc[released, "sum"]) < 0.01).all()


def test_linked_example(tmp_path: Path) -> None:
    example = REPO / "examples" / "linked"
    exe = str(Path(sys.executable).with_name("jointstats"))
    out = tmp_path / "linked.csv"
    run = subprocess.run(
        [exe, "local", "job.toml",
         "--node", "ministry=data/ministry/idp_registry.csv",
         "--node", "survey=data/survey/household_survey.csv",
         "--node", "jips", "--out", str(out)],
        cwd=example, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    registry = pd.read_csv(example / "data/ministry/idp_registry.csv")
    survey = pd.read_csv(example / "data/survey/household_survey.csv")
    joined = registry.merge(survey, on="national_id")
    truth = joined.groupby(["district", "employment"]).agg(
        count=("weight", "size"), weighted=("weight", "sum")
    )
    table = pd.read_csv(out)
    assert list(table.columns) == [
        "district",
        "employment",
        "count",
        "weighted_count",
        "suppressed",
    ]
    for row in table.itertuples(index=False):
        key = (row.district, row.employment)
        true_count = int(truth["count"].get(key, 0))
        assert row.suppressed == (true_count < 10)
        if not row.suppressed:
            assert int(row.count) == true_count
            assert abs(row.weighted_count - truth["weighted"][key]) < 1e-3

"""examples/fuzzy runs as its README says; its table is checked against the true pairs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import REPO


def test_fuzzy_example(tmp_path: Path) -> None:
    example = REPO / "examples" / "fuzzy"
    exe = str(Path(sys.executable).with_name("jointstats"))
    out = tmp_path / "fuzzy.csv"
    run = subprocess.run(
        [exe, "local", "job.toml",
         "--node", "ministry=data/ministry/registry.csv",
         "--node", "survey=data/survey/survey.csv",
         "--node", "jips", "--out", str(out)],
        cwd=example, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    registry = pd.read_csv(example / "data/ministry/registry.csv")
    survey = pd.read_csv(example / "data/survey/survey.csv")
    pairs = pd.read_csv(example / "data/true_pairs.csv")
    joined = pairs.merge(registry, left_on="registry_id", right_on="record_id").merge(
        survey, left_on="survey_id", right_on="record_id"
    )
    truth = joined.groupby(["district", "employment"]).size()
    table = pd.read_csv(out)
    assert list(table.columns) == ["district", "employment", "count", "suppressed"]
    released = table[~table["suppressed"]]
    assert len(released) == 9
    for row in released.itertuples(index=False):
        true = int(truth[(row.district, row.employment)])
        # within 1 % or, for these small cells (31-200 people), one record: measured 0-1
        assert abs(row.count - true) <= max(1, 0.01 * true), (row.district, row.employment)

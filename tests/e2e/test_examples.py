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

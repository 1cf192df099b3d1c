"""`jointstats local --plot` with `shares`: one run of the real stack, a picture and shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import JOB, pooled
from tests.e2e.test_local_cli import JOB_TOML, _jointstats
from tests.plaintext import expected_crosstab


def test_local_plot_writes_a_png_and_the_csv_has_row_shares(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text('shares = "row"\n' + JOB_TOML)
    nodes = [f"--node={a}={data_dir / a / 'households.csv'}" for a in ("unhcr", "drc")]
    run = _jointstats(
        "local", "job.toml", *nodes, "--node", "jips", "--out", "out.csv",
        "--plot", "out.png", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    picture = (tmp_path / "out.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 10_000
    assert "picture: out.png" in run.stderr
    assert json.loads((tmp_path / "out.meta.json").read_text())["disclosure"]["min_cell"] == 10
    table = pd.read_csv(tmp_path / "out.csv")
    expected = expected_crosstab(
        pooled(data_dir, ("unhcr", "drc")), JOB["by"], JOB["domains"], 10, "income", (0, 2000)
    )
    released = expected["count"].astype("float64").where(~expected["suppressed"])
    totals = released.fillna(0).groupby(expected["region"]).transform("sum")
    share = released / totals.where(totals > 0)
    assert table["share"].isna().tolist() == share.isna().tolist()
    assert np.allclose(table["share"].dropna(), share.dropna())

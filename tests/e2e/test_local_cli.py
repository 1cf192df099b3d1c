"""`jointstats local` as a user runs it: the real stack, a tidy CSV, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import JOB, pooled
from tests.plaintext import expected_crosstab

JOB_TOML = """
kind = "crosstab"
dataset = "households"
by = ["region", "displacement_status"]
sum = "income"
bounds = [0, 2000]
[domains]
region = ["north", "south", "east", "west"]
displacement_status = ["idp", "returnee", "host"]
[disclosure]
min_cell = 10
"""


def _jointstats(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("jointstats") or str(Path(sys.executable).with_name("jointstats"))
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False
    )


def test_local_writes_the_tidy_csv_and_keeps_the_workdir(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(JOB_TOML)
    nodes = [f"--node={a}={data_dir / a / 'households.csv'}" for a in ("unhcr", "drc")]
    run = _jointstats(
        "local", "job.toml", *nodes, "--node", "jips", "--out", "out.csv",
        "--workdir", "state", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == [*JOB["by"], "count", "sum", "mean", "suppressed"]
    expected = expected_crosstab(
        pooled(data_dir, ("unhcr", "drc")), JOB["by"], JOB["domains"], 10, "income", (0, 2000)
    )
    assert list(table["region"]) == list(expected["region"])
    assert list(table["suppressed"]) == ["true" if s else "false" for s in expected["suppressed"]]
    released = ~expected["suppressed"]
    assert [int(c) for c in table.loc[released, "count"]] == list(expected.loc[released, "count"])
    assert (table.loc[~released, ["count", "sum", "mean"]] == "").all().all()
    for name in ("unhcr", "drc", "jips"):
        assert (tmp_path / "state" / name / "keys" / "tls.key").exists()


@pytest.mark.parametrize(
    ("job_text", "message"),
    [
        (JOB_TOML.replace('dataset = "households"', 'dataset = "census"'), "dataset 'census'"),
        (JOB_TOML + 'inputs = ["unhcr", "unicef"]\n', "unknown node 'unicef'"),
        ("kind = crosstab", "not valid TOML"),
    ],
)
def test_local_failures_are_one_line_without_traceback(
    data_dir: Path, tmp_path: Path, job_text: str, message: str
) -> None:
    if "inputs" in job_text:  # TOML: top-level keys must come before the tables
        job_text = 'inputs = ["unhcr", "unicef"]\n' + job_text.replace(
            'inputs = ["unhcr", "unicef"]\n', ""
        )
    (tmp_path / "job.toml").write_text(job_text)
    run = _jointstats(
        "local", "job.toml", f"--node=unhcr={data_dir / 'unhcr' / 'households.csv'}",
        "--node", "drc", "--node", "jips", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode != 0
    assert message in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_saved_json_result_verifies_offline_and_an_edit_is_caught(
    data_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "job.toml").write_text(JOB_TOML)
    nodes = [f"--node={a}={data_dir / a / 'households.csv'}" for a in ("unhcr", "drc")]
    run = _jointstats(
        "local", "job.toml", *nodes, "--node", "jips", "--out", "out.json",
        "--workdir", "state", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    roster = "--roster=state/roster.toml"
    check = _jointstats("result", "verify", "out.json", roster, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "verified, signed by drc, unhcr, jips" in check.stdout
    saved = json.loads((tmp_path / "out.json").read_text())
    rows = saved["signed"]["rows"]
    first = next(r for r in rows if r[2] is not None)
    first[2] += 1  # one count raised after the release
    (tmp_path / "edited.json").write_text(json.dumps(saved))
    edited = _jointstats("result", "verify", "edited.json", roster, cwd=tmp_path)
    assert edited.returncode == 5
    assert "does not match drc's signature" in edited.stderr
    assert "Traceback" not in edited.stderr
    readable = json.loads((tmp_path / "out.json").read_text())
    shown = next(r for r in readable["table"] if r["count"] is not None)
    shown["count"] += 1  # the plain copy people read, edited; the signed part untouched
    (tmp_path / "readable.json").write_text(json.dumps(readable))
    misleading = _jointstats("result", "verify", "readable.json", roster, cwd=tmp_path)
    assert misleading.returncode == 5
    assert "readable `table` differs from the signed one" in misleading.stderr


def test_an_unsupported_out_suffix_fails_before_any_work(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(JOB_TOML)
    run = _jointstats(
        "local", "job.toml", f"--node=unhcr={data_dir / 'unhcr' / 'households.csv'}",
        "--node", "drc", "--node", "jips", "--out", "table.xlsx", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2 and "use .csv, .json or .parquet" in run.stderr
    assert not (tmp_path / "state").exists()


BANDS = ["0-18", "18-60", "60-80"]
ISSUE_EXAMPLE_TOML = """
kind = "crosstab"
dataset = "people"
by = ["oblast", "age"]
[where]
status = ["idp", "returnee"]
age = { max = 79 }
[bins]
age = [0, 18, 60, 80]
[domains]
oblast = ["Odeska", "Mykolaivska", "Khersonska", "Kirovohradska"]
[disclosure]
min_cell = 10
"""


def test_local_runs_the_filtered_banded_example_as_pandas_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    oblasts = ["Odeska", "Mykolaivska", "Khersonska", "Kirovohradska"]
    frames = {}
    for name, rows in (("odesa", 500), ("mykolaiv", 300)):
        frames[name] = pd.DataFrame(
            {
                "oblast": rng.choice(oblasts, rows, p=[0.5, 0.3, 0.17, 0.03]),
                "age": rng.integers(0, 100, rows),
                "status": rng.choice(["idp", "returnee", "host"], rows, p=[0.5, 0.3, 0.2]),
            }
        )
        (tmp_path / name).mkdir()
        frames[name].to_csv(tmp_path / name / "people.csv", index=False)
    (tmp_path / "job.toml").write_text(ISSUE_EXAMPLE_TOML)
    run = _jointstats(
        "local", "job.toml", "--node", "odesa=odesa/people.csv",
        "--node", "mykolaiv=mykolaiv/people.csv", "--node", "jips", "--out", "out.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    people = pd.concat(frames.values())
    kept = people[people["status"].isin(["idp", "returnee"]) & (people["age"] <= 79)].copy()
    kept["age"] = pd.cut(kept["age"], [0, 18, 60, 80], right=False, labels=BANDS).astype(str)
    expected = expected_crosstab(kept, ["oblast", "age"], {"oblast": oblasts, "age": BANDS}, 10)
    table = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert list(zip(table["oblast"], table["age"], strict=True)) == list(
        zip(expected["oblast"], expected["age"], strict=True)
    )
    assert list(table["suppressed"]) == ["true" if s else "false" for s in expected["suppressed"]]
    released = ~expected["suppressed"]
    assert [int(c) for c in table.loc[released, "count"]] == list(expected.loc[released, "count"])
    assert expected["suppressed"].any() and released.any()

"""`jointstats local --node NAME=node.toml` over CSV, a Parquet folder and PostgreSQL, its
one-line failures, and `jointstats node check` (a summary without values)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

from tests.conftest import JOB, make_households
from tests.pg import PostgresServer, free_port
from tests.plaintext import expected_crosstab

SECRET = "SECRET-VALUE-123"
DB_ENV = "E2E_HOUSEHOLDS_DB_URL"
JOB_TOML = """
kind = "crosstab"
dataset = "households"
by = ["region", "displacement_status"]
weight = "w"
[domains]
region = ["north", "south", "east", "west"]
displacement_status = ["idp", "returnee", "host"]
[disclosure]
min_cell = 10
"""


def _jointstats(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("jointstats") or str(Path(sys.executable).with_name("jointstats"))
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _node_toml(path: Path, datasets: dict) -> Path:
    """A full node config; `jointstats local` uses only its datasets."""
    config = {"name": path.stem, "coordinator": "203.0.113.1:1", "roster": "roster.toml"}
    path.write_text(tomli_w.dumps({**config, "keys": "keys", "datasets": datasets}))
    return path


def _assert_one_clean_error(run: subprocess.CompletedProcess, message: str) -> None:
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], run.stderr
    assert "Traceback" not in run.stderr and SECRET not in run.stdout + run.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory, postgres: PostgresServer) -> dict:
    root = tmp_path_factory.mktemp("e2e-sources")
    rng = np.random.default_rng(11)
    frames = [make_households(rng, n) for n in (220, 160, 180)]
    for frame in frames:
        frame["w"] = np.round(rng.uniform(0.5, 2.0, len(frame)), 3)
    frames[0].to_csv(root / "households.csv", sep="|", index=False)
    (root / "households").mkdir()
    frames[1].to_parquet(root / "households" / "a.parquet")
    postgres.load("e2e_households", frames[2])
    with_secret = frames[0].assign(note=SECRET)  # a value that must never be printed
    with_secret.to_csv(root / "with_secret.csv", index=False)
    (root / "latin1.csv").write_bytes(f"region,note\nnorth,{SECRET}\xe9\n".encode("latin-1"))
    return {"root": root, "frames": frames, "url": postgres.url()}


def test_local_with_node_configs_csv_parquet_folder_and_postgres(files, tmp_path):
    root = files["root"]
    csv = _node_toml(tmp_path / "a.toml", {"households": {"path": str(root / "households.csv"),
                                                         "delimiter": "|"}})  # fmt: skip
    pg = _node_toml(tmp_path / "c.toml", {"households": {"url_env": DB_ENV,
                                                        "table": "e2e_households"}})  # fmt: skip
    (tmp_path / "job.toml").write_text(JOB_TOML)
    run = _jointstats(
        "local", "job.toml", f"--node=a={csv}", f"--node=b={root / 'households'}",
        f"--node=c={pg}", "--out", "out.csv", cwd=tmp_path, env={DB_ENV: files["url"]},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(tmp_path / "out.csv")
    assert list(table.columns) == [*JOB["by"], "count", "weighted_count", "suppressed"]
    expected = expected_crosstab(
        pd.concat(files["frames"]), JOB["by"], JOB["domains"], 10, weight="w"
    )
    released = ~expected["suppressed"]
    assert list(table["suppressed"]) == list(expected["suppressed"])
    assert list(table.loc[released, "count"]) == list(expected.loc[released, "count"])
    np.testing.assert_allclose(
        table.loc[released, "weighted_count"], expected.loc[released, "weighted_count"], atol=1e-5
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("db_down", "dataset households: cannot connect to the database"),
        ("latin1", "dataset households: latin1.csv is not valid utf-8 text"),
    ],
)
def test_local_bad_source_is_one_line_without_value(files, tmp_path, case, message):
    root = files["root"]
    if case == "db_down":
        entry = {"url": f"postgresql://reader@127.0.0.1:{free_port()}/survey", "table": "t"}
    else:
        entry = {"path": str(root / "latin1.csv")}
    bad = _node_toml(tmp_path / "bad.toml", {"households": entry})
    (tmp_path / "job.toml").write_text(JOB_TOML)
    run = _jointstats(
        "local", "job.toml", f"--node=a={bad}", f"--node=b={root / 'households'}", "--node=c",
        cwd=tmp_path,
    )  # fmt: skip
    _assert_one_clean_error(run, f"node a: {message}")


def test_node_check_prints_shape_types_and_nulls_never_values(files, tmp_path):
    root = files["root"]
    config = _node_toml(
        tmp_path / "node.toml",
        {
            "survey": {"path": str(root / "with_secret.csv"),
                       "columns": {"region": "text", "income": "number", "note": "text"}},
            "pooled": {"path": str(root / "households"), "format": "parquet"},
            "registry": {"url_env": DB_ENV, "view": "e2e_households"},
        },
    )  # fmt: skip
    run = _jointstats("node", "check", str(config), cwd=tmp_path, env={DB_ENV: files["url"]})
    # the datasets are checked first; this config's roster does not exist, which the preflight
    # then reports as its one error
    assert run.returncode == 2 and "cannot read roster" in run.stderr, run.stderr
    out = run.stdout
    assert "dataset survey: csv file" in out and f"{len(files['frames'][0])} rows" in out
    assert "dataset registry: PostgreSQL view e2e_households, 180 rows" in out
    assert "income" in out and "number" in out and "0 null" in out
    for value in (SECRET, "north", "idp", "returnee"):
        assert value not in out + run.stderr


def test_node_check_fails_with_one_line(files, tmp_path):
    config = _node_toml(
        tmp_path / "node.toml",
        {"survey": {"path": str(files["root"] / "latin1.csv"), "columns": {"region": "text"}}},
    )
    run = _jointstats("node", "check", str(config), cwd=tmp_path)
    _assert_one_clean_error(run, "error: dataset survey: latin1.csv is not valid utf-8 text")
    assert run.returncode == 4

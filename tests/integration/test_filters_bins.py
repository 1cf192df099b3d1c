"""[where] and [bins] through a running federation (two CSV nodes and a PostgreSQL node):
the issue's example job (IDPs and returnees aged <= 79, by oblast and age band) against pandas,
a value in no band failing without counts or values (or going to `other`), and the audit log
naming the filter columns as columns used."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.pg import PostgresServer
from tests.plaintext import expected_crosstab

NODES = ("odesa", "mykolaiv", "kherson")
DB_ENV = "PEOPLE_DB_URL"
OBLASTS = ["Odeska", "Mykolaivska", "Khersonska", "Kirovohradska"]
BANDS = ["0-18", "18-60", "60-80"]
JOB: dict = {  # the issue's example
    "kind": "crosstab",
    "dataset": "people",
    "by": ["oblast", "age"],
    "where": {"status": ["idp", "returnee"], "age": {"max": 79}},
    "bins": {"age": [0, 18, 60, 80]},
    "domains": {"oblast": OBLASTS},
    "disclosure": {"min_cell": 10},
}


def _people(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"p{i}" for i in rng.permutation(600)[:rows]],  # overlapping across nodes
            "oblast": rng.choice(OBLASTS, rows, p=[0.5, 0.3, 0.17, 0.03]),
            "age": rng.integers(0, 100, rows),
            "status": rng.choice(["idp", "returnee", "host"], rows, p=[0.5, 0.3, 0.2]),
        }
    )


@pytest.fixture(scope="module")
def people(tmp_path_factory, postgres: PostgresServer) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("people")
    rng = np.random.default_rng(14)
    frames = {name: _people(rng, rows) for name, rows in zip(NODES, (400, 250, 200), strict=True)}
    datasets = {}
    for name in NODES[:2]:
        frames[name].to_csv(root / f"{name}.csv", index=False)
        datasets[name] = {"people": {"path": str(root / f"{name}.csv")}}
    postgres.load("people", frames["kherson"])
    datasets["kherson"] = {"people": {"url_env": DB_ENV, "table": "people"}}
    env = {DB_ENV: postgres.url()}
    nodes = [LocalNode(n, datasets[n], env=env if n == "kherson" else {}) for n in NODES]
    with LocalFederation(nodes, root / "fed", session_timeout=60) as fed:
        yield fed, pd.concat(frames.values()), frames


def _banded(frame: pd.DataFrame, edges: list[int], labels: list[str]) -> pd.DataFrame:
    """The plaintext answer's frame: filtered, then the age column replaced by its band."""
    kept = frame[frame["status"].isin(["idp", "returnee"]) & (frame["age"] <= 79)].copy()
    bands = pd.cut(kept["age"], edges, right=False, labels=labels)
    kept["age"] = bands.astype(object).where(bands.notna(), "other")
    return kept


def test_the_issue_example_equals_pandas_on_files_and_postgres(people):
    fed, pooled, _ = people
    other = copy.deepcopy(JOB)
    other["bins"]["age"] = [0, 18, 60]
    other["domains"]["other"] = True
    narrow = copy.deepcopy(JOB)
    narrow["bins"]["age"] = [0, 18, 60]
    ids = {name: fed.client.submit(job) for name, job in [("example", JOB), ("other", other)]}
    failing = fed.client.submit(narrow)

    result = fed.client.wait(ids["example"], timeout=120)
    expected = expected_crosstab(
        _banded(pooled, [0, 18, 60, 80], BANDS), JOB["by"], {"oblast": OBLASTS, "age": BANDS}, 10
    )
    assert expected["suppressed"].any() and not expected["suppressed"].all()
    table = result.table
    assert list(table["age"]) == list(expected["age"])
    assert list(table["suppressed"]) == list(expected["suppressed"])
    released = ~expected["suppressed"]
    assert list(table.loc[released, "count"]) == list(expected.loc[released, "count"])

    result = fed.client.wait(ids["other"], timeout=120)
    domains = {"oblast": [*OBLASTS, "other"], "age": ["0-18", "18-60", "other"]}
    expected = expected_crosstab(
        _banded(pooled, [0, 18, 60], ["0-18", "18-60"]), JOB["by"], domains, 10
    )
    released = ~expected["suppressed"]
    assert list(result.table["suppressed"]) == list(expected["suppressed"])
    assert list(result.table.loc[released, "count"]) == list(expected.loc[released, "count"])
    assert expected.loc[released & (expected["age"] == "other"), "count"].sum() > 0

    with pytest.raises(JobFailed) as failure:  # ages 60-79 fall in no band
        fed.client.wait(failing, timeout=120)
    reason = str(failure.value)
    assert "column age: values outside the declared domain" in reason, reason
    detail = reason.split(" failed: ", 1)[1]  # after the job id (which may hold digits)
    assert "widen [bins]" in detail and not any(ch.isdigit() for ch in detail), reason

    for node in NODES:  # the filter column is a column used, named in each node's audit log
        lines = (fed.workdir / node / "audit.jsonl").read_text().splitlines()
        accepted = [
            e
            for e in map(json.loads, lines)
            if e["event"] == "JOB_ACCEPTED" and e["job_id"] == ids["example"]
        ]
        assert accepted[0]["fields"]["columns"] == {"people": ["oblast", "age", "status"]}


def test_a_linked_job_filters_and_bands_at_each_side(people):
    """Left (files): ages <= 79 in bands; right (files): IDPs and returnees; joined on id."""
    fed, _, frames = people
    job = {
        "kind": "linked_crosstab",
        "helper": "kherson",
        "left": {"node": "odesa", "dataset": "people", "key": "id", "by": ["age"]},
        "right": {"node": "mykolaiv", "dataset": "people", "key": "id", "by": ["status"]},
        "where": {"status": ["idp", "returnee"], "age": {"max": 79}},
        "bins": {"age": [0, 18, 60, 80]},
        "domains": {"status": ["idp", "returnee"]},
    }
    result = fed.client.run(job, timeout=120)
    left = frames["odesa"]
    left = left[left["age"] <= 79].assign(
        age=pd.cut(left["age"], [0, 18, 60, 80], right=False, labels=BANDS).astype(str)
    )
    right = frames["mykolaiv"]
    right = right[right["status"].isin(["idp", "returnee"])]
    merged = left[["id", "age"]].merge(right[["id", "status"]], on="id")
    domains = {"age": BANDS, "status": ["idp", "returnee"]}
    expected = expected_crosstab(merged, ["age", "status"], domains, min_cell=5)
    assert result.metadata["matched"] == len(merged)
    table = result.table
    assert list(table["suppressed"]) == list(expected["suppressed"])
    released = ~expected["suppressed"]
    assert released.any()
    assert list(table.loc[released, "count"]) == list(expected.loc[released, "count"])

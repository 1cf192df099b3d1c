"""[where] and [bins]: parsing errors, unused domains, columns used, and pushdown into SQL with
bound parameters (no job value ever appears in a statement's text)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.config import Policy
from jointstats.errors import DataError, JobError, RefusedError
from jointstats.node.policy import Offer, _check_policy
from jointstats.node.sources import OUTSIDE, FileSource, filter_sql
from jointstats.protocols import parse_job
from jointstats.protocols.crosstab import PROTOCOL as CROSSTAB
from jointstats.protocols.linked.records import prepare
from jointstats.protocols.linked_crosstab import PROTOCOL as LINKED
from tests.unit.test_linked_shares import linked_job

SECRET = "x'); DROP TABLE t; -- SECRET"
JOB: dict = {
    "kind": "crosstab",
    "dataset": "people",
    "by": ["oblast", "age"],
    "where": {"status": ["idp", "returnee"], "age": {"max": 79}},
    "bins": {"age": [0, 18, 60, 80]},
    "domains": {"oblast": ["Odeska", "Mykolaivska"]},
    "disclosure": {"min_cell": 10},
}
FRAME = pd.DataFrame(
    {
        "oblast": ["Odeska", "Odeska", "Mykolaivska", "Odeska", "Mykolaivska", "Odeska", None],
        "age": [5, 79, 18, 80, 60, None, 30],
        "status": ["idp", "returnee", "idp", "idp", "host", "idp", "idp"],
    }
)


def _job(**changes) -> dict:
    job = copy.deepcopy(JOB)
    for key, value in changes.items():
        if value is None:
            job.pop(key)
        else:
            job[key] = value
    return job


def test_the_issue_example_parses_with_bands_as_the_domain():
    job = CROSSTAB.parse(JOB)
    assert job.domains["age"] == ("0-18", "18-60", "60-80")
    assert job.shape == (2, 3)
    assert [(c.column, c.values, c.low, c.high) for c in job.where] == [
        ("status", ("idp", "returnee"), None, None),
        ("age", None, None, 79.0),
    ]
    assert CROSSTAB.columns_used(job, "n") == {"people": ["oblast", "age", "status"]}
    assert CROSSTAB.parse(_job(bins={"age": [0, 2.5, 5]})).domains["age"] == ("0-2.5", "2.5-5")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bins": {"age": [0, 60, 18]}}, "strictly increasing"),
        ({"bins": {"age": [0, 0, 18]}}, "strictly increasing"),
        ({"bins": {"age": [18]}}, "strictly increasing"),
        ({"bins": {"age": [0, "18"]}}, "strictly increasing"),
        ({"bins": {"age": [0, 18], "year": [1, 2]}}, "not in `by`: year"),
        ({"where": {"status": True}}, "[where] `status` must be a list of values or a range {"),
        ({"where": {"status": "idp"}}, "[where] `status` must be a list of values or a range {"),
        ({"where": {"status": [True]}}, "a list holds 1 to"),
        ({"where": {"a\nb": True}}, "[where] `'a\\nb'` must be"),
        ({"domains": {"oblast": ["Odeska"], "x\ny": ["1"]}}, "bands): 'x\\ny'"),
        ({"where": {"status": []}}, "a list holds 1 to"),
        ({"where": {"age": {"max": "79"}}}, "a range is { min = ..., max = ... }"),
        ({"where": {"age": {"below": 79}}}, "a range is { min = ..., max = ... }"),
        ({"where": {"age": {"min": 80, "max": 79}}}, "`min` is above `max`"),
        ({"where": ["status"]}, "[where] must be a table"),
        ({"domains": {"oblast": ["Odeska"], "oblats": ["x"], "sex": ["f"]}}, ": oblats, sex"),
        ({"domains": {"oblast": ["Odeska"], "age": ["0-18"]}}, "binned columns take their bands"),
        ({"domains": None}, "needs a [domains] table"),
    ],
)
def test_bad_filters_bands_and_unused_domains_are_refused(changes, message):
    with pytest.raises(JobError) as refused:
        CROSSTAB.parse(_job(**changes))
    assert message in str(refused.value)


def test_a_job_binning_every_by_column_needs_no_domains():
    job = CROSSTAB.parse(_job(by=["age"], domains=None))
    assert job.cell_domains == [("0-18", "18-60", "60-80")]


def test_a_filter_column_needs_a_column_grant():
    fingerprint = "ab" * 32
    grant = {"analysts": [{"fingerprint": fingerprint, "datasets": {"people": ["oblast", "age"]}}]}
    policy = Policy.from_doc(grant, Path("policy.toml"))
    columns = CROSSTAB.columns_used(CROSSTAB.parse(JOB), "n")
    offer = Offer(None, [], [])  # type: ignore[arg-type]
    with pytest.raises(RefusedError, match="may not use column.s. status of people"):
        _check_policy(policy, "n", fingerprint, "crosstab", offer, columns)
    columns = CROSSTAB.columns_used(CROSSTAB.parse(_job(where=None)), "n")
    _check_policy(policy, "n", fingerprint, "crosstab", offer, columns)


def test_filter_sql_binds_every_job_value_as_a_parameter():
    job = CROSSTAB.parse(_job(where={"status": [SECRET, "idp"], "age": {"min": 1.25}}))
    for param in (lambda p: f"${p}", lambda p: f"%({p})s"):  # DuckDB, PostgreSQL
        keys, clause, params = filter_sql(
            lambda c: f'"{c}"', lambda c: f"CAST({c} AS double)", "text", param,
            list(job.by), job.where, job.bins,
        )  # fmt: skip
        sql = " ".join([*keys, clause])
        assert SECRET not in sql and "1.25" not in sql and "18-60" not in sql and "60" not in sql
        assert SECRET in params.values() and 1.25 in params.values()
        assert {0.0, 18.0, 60.0, 80.0, "0-18", "18-60", "60-80", OUTSIDE} <= set(params.values())
        assert all(param(name) in sql for name in params)


def test_duckdb_pushdown_filters_and_bands_with_parameters(tmp_path: Path, monkeypatch):
    FRAME.assign(status=FRAME["status"].replace("host", SECRET)).to_csv(
        tmp_path / "p.csv", index=False
    )
    source = FileSource("people", tmp_path / "p.csv")
    statements = []
    run = FileSource._run

    def spy(self, sql, params=None, arrow=False):
        statements.append((sql, params))
        return run(self, sql, params, arrow)

    monkeypatch.setattr(FileSource, "_run", spy)
    where = {"status": ["idp", SECRET], "age": {"max": 79}, "oblast": ["Odeska", "Mykolaivska"]}
    job = CROSSTAB.parse(_job(where=where))
    local = CROSSTAB.local_step(job, "n", {"people": source})
    grouped_sql, params = statements[-1]
    assert SECRET not in grouped_sql and SECRET in params.values()
    # kept: (Odeska, 5), (Mykolaivska, 18), (Mykolaivska, 60); a NULL age fails the range
    assert local.tolist() == [1, 0, 0, 0, 1, 1]
    with pytest.raises(DataError, match="column oblast: empty values"):
        CROSSTAB.local_step(
            CROSSTAB.parse(_job(where={"age": {"max": 59}})), "n", {"people": source}
        )


def test_a_value_in_no_band_fails_without_counts_or_goes_to_other(tmp_path: Path):
    FRAME.to_csv(tmp_path / "p.csv", index=False)
    source = {"people": FileSource("people", tmp_path / "p.csv")}
    narrow = _job(where={"oblast": ["Odeska", "Mykolaivska"]}, bins={"age": [0, 18, 60]})
    with pytest.raises(DataError) as failure:
        CROSSTAB.local_step(CROSSTAB.parse(narrow), "n", source)
    reason = str(failure.value)
    assert "column age: empty values and values outside the declared domain" in reason
    assert "widen [bins]" in reason and not any(ch.isdigit() for ch in reason.split("(")[0])
    narrow["domains"]["other"] = True
    narrow["where"]["age"] = {"min": 0}  # drops the NULL age
    job = CROSSTAB.parse(narrow)
    assert job.cell_domains[1] == ("0-18", "18-60", "other")
    cells = CROSSTAB.local_step(job, "n", source).reshape(3, 3)
    # Odeska: 5 -> 0-18, 79 and 80 -> other; Mykolaivska: 18 -> 18-60, 60 -> other
    assert cells.tolist() == [[1, 0, 2], [0, 1, 1], [0, 0, 0]]


def test_range_filters_and_bands_need_a_number_column(tmp_path: Path):
    FRAME.to_csv(tmp_path / "p.csv", index=False)
    source = {"people": FileSource("people", tmp_path / "p.csv")}
    job = CROSSTAB.parse(_job(where={"status": {"min": 1}}))
    with pytest.raises(DataError, match="column status: holds text, but a range in"):
        CROSSTAB.local_step(job, "n", source)


def _linked(**top) -> dict:
    doc = linked_job()
    doc["left"]["by"] = ["d", "age"]
    doc["domains"] = {"d": ["d1", "d2"], "emp": ["e", "u"]}
    return {**doc, **top}


def test_linked_filters_go_to_the_side_that_names_the_column():
    doc = _linked(where={"emp": ["e"], "age": {"min": 18}}, bins={"age": [0, 18, 60]})
    doc["right"]["where"] = {"status": ["idp"]}
    _, job = parse_job(doc)
    assert [c.column for c in job.left.where] == ["age"] and list(job.left.bins) == ["age"]
    assert [c.column for c in job.right.where] == ["status", "emp"] and not job.right.bins
    assert job.domains["age"] == ("0-18", "18-60") and job.width(job.left) == 4
    assert LINKED.columns_used(job, "survey") == {"household_survey": ["id", "emp", "status"]}
    with pytest.raises(JobError, match="status named by neither side"):
        parse_job(_linked(where={"status": ["idp"]}, bins={"age": [0, 18]}))
    with pytest.raises(JobError, match="not in `by`: id"):
        parse_job({**_linked(bins={"id": [0, 1], "age": [0, 1]})})
    with pytest.raises(JobError, match=r"\[domains\] entries for no `by` column"):
        parse_job(_linked(domains={"d": ["d1"], "emp": ["e"], "age": ["a"], "s": ["f"]}))


def test_linked_local_step_filters_and_bands_in_the_engine(tmp_path: Path):
    registry = pd.DataFrame(
        {"id": ["1", "2", "3", "4"], "d": ["d1", "d2", "d1", "d2"], "age": [5, 30, 70, 17]}
    )
    registry.to_csv(tmp_path / "r.csv", index=False)
    _, job = parse_job(_linked(where={"age": {"max": 59}}, bins={"age": [0, 18, 60]}))
    records = prepare(
        job, job.left, "ministry", {"idp_registry": FileSource("r", tmp_path / "r.csv")}
    )
    assert len(records) == 3  # age 70 filtered out in DuckDB
    by_key = dict(zip(records.keys.to_pylist(), records.cells.tolist(), strict=True))
    # cell = d index * 2 + band index
    assert by_key == {"1": 0, "2": 3, "4": 2}
    assert np.all(records.cells >= 0)

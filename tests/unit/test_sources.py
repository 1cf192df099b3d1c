"""Sources in-process: file options, PostgreSQL pushdown (a real server), quoting, NULLs,
declared columns, value-free errors, and the crosstab job's `weight`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import ConfigError, DataError, JobError
from jointstats.node.sources import FileSource, source_for
from jointstats.protocols.crosstab import PROTOCOL as CROSSTAB
from tests.pg import PostgresServer

SECRET = "SECRET-VALUE-123"
FRAME = pd.DataFrame(
    {
        "region": ["north", "north", None, "007", "south", "north"],
        "odd name \"'%": ["a", "b", "a", "a", None, "a"],
        "income": [10.0, 2500.0, 5.0, -3.0, 7.5, None],
        "w": [1.5, 2.0, 0.25, 1.0, 3.0, 1.0],
    }
)


@pytest.fixture(scope="module")
def table(postgres: PostgresServer) -> str:
    postgres.load("unit_frame", FRAME)
    postgres.load("unit_secret", pd.DataFrame({"region": ["north"], "code": [SECRET]}))
    return "unit_frame"


def _sql(postgres: PostgresServer, **spec) -> object:
    return source_for("frame", {"url": postgres.url(user="jointstats"), **spec})


def test_postgres_group_by_matches_pandas_with_nulls_bounds_and_weights(postgres, table):
    source = _sql(postgres, table=table)
    grouped = source.grouped(["region", "odd name \"'%"], None, None, "w")
    got = {k: (n, w) for k, n, w in zip(grouped.keys, grouped.counts, grouped.weights, strict=True)}
    assert got[(None, "a")] == (1, 0.25)  # NULL keys come back as NULL, not "None" or ""
    assert got[("north", "a")] == (2, 2.5)
    assert got[("south", None)] == (1, 3.0)
    summed = _sql(postgres, query=f"SELECT * FROM {table} WHERE region LIKE 'n%'")
    rows = summed.grouped(["region"], "income", (0.0, 100.0))
    assert rows.keys == [("north",)] and rows.sums == [110.0] and rows.value_nulls == 1


def test_postgres_read_text_and_summary(postgres, table):
    source = _sql(postgres, view=f"public.{table}", columns={"income": "number"})
    text = source.read_text(["region", "income"])
    assert text.column("region").to_pylist() == ["north", "north", None, "007", "south", "north"]
    assert text.column("income").null_count == 1
    summary = source.summary()
    assert summary.rows == 6
    assert [(c.name, c.kind, c.nulls) for c in summary.columns][:3] == [
        ("region", "text", 1), ("odd name \"'%", "text", 1), ("income", "number", 1),
    ]  # fmt: skip


def test_job_column_names_are_checked_before_they_reach_sql(postgres, table):
    source = _sql(postgres, table=table)
    attack = 'region" FROM unit_frame; DROP TABLE unit_frame; --'
    with pytest.raises(DataError, match="has no column"):
        source.grouped([attack])
    assert source.grouped(["region"]).counts  # the table is still there


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({"table": "t", "query": "SELECT 1"}, ConfigError, "exactly one of `table`"),
        ({"table": "t", "url": "postgresql://u:pw@h/db"}, ConfigError, "url_env or url_file"),
        ({"table": "t", "url_env": "JOINTSTATS_UNSET_VAR"}, ConfigError, "is unset"),
        ({"table": "t", "url": "mysql://h/db"}, ConfigError, "only postgresql"),
        ({"table": "t", "url": "postgresql://h/db", "host": "x"}, ConfigError, "unknown field"),
        ({"path": "x.xlsx"}, ConfigError, "not a .csv or .parquet"),
        ({"path": "x.csv", "encoding": "cp1252"}, ConfigError, "utf-8, utf-16 or latin-1"),
        ({"path": "x.csv", "columns": {"a": "float"}}, ConfigError, "type must be one of"),
        ({"name": "x"}, ConfigError, "give a `path`"),
    ],
)
def test_bad_dataset_entries(spec, error, message):
    with pytest.raises(error, match=message):
        source_for("d", spec)


def test_url_file_and_failing_query_message_has_no_value(postgres, table, tmp_path):
    (tmp_path / "db.url").write_text(postgres.url() + "\n")
    query = "SELECT region FROM unit_secret WHERE CAST(code AS int) > 0"
    source = source_for("d", {"url_file": str(tmp_path / "db.url"), "query": query})
    with pytest.raises(DataError) as failure:
        source.grouped(["region"])
    assert "SQLSTATE 22P02" in str(failure.value) and SECRET not in str(failure.value)
    denied = source_for("d", {"url_file": str(tmp_path / "db.url"), "table": "pg_authid"})
    with pytest.raises(DataError, match="SQLSTATE 42501"):  # the reader role may not read it
        denied.grouped(["rolname"])


def test_csv_options_header_delimiter_encoding_and_declared_names(tmp_path):
    (tmp_path / "x.csv").write_bytes("007|nörth|1,5\n8|south|2\n".encode("latin-1"))
    declared = {"id": "text", "region": "text", "amount": "text"}
    source = FileSource(
        "d", tmp_path / "x.csv", delimiter="|", encoding="latin1", header=False, declared=declared
    )
    assert source.read_text(["id", "region"]).column("id").to_pylist() == ["007", "8"]
    assert sorted(source.grouped(["region"]).keys) == [("nörth",), ("south",)]
    with pytest.raises(DataError, match="not valid utf-8") as failure:
        FileSource("d", tmp_path / "x.csv", delimiter="|", header=False).grouped(["column1"])
    assert "nörth" not in str(failure.value)


def test_missing_column_names_declared_columns_only(tmp_path):
    (tmp_path / "x.csv").write_text(f"{SECRET},north\n")  # a headerless file read with a header
    with pytest.raises(DataError) as failure:
        FileSource("d", tmp_path / "x.csv").grouped(["region"])
    assert "has no column 'region'" in str(failure.value) and SECRET not in str(failure.value)
    declared = FileSource("d", tmp_path / "x.csv", declared={"region": "text"})
    with pytest.raises(DataError, match="declared columns: region"):
        declared.grouped(["region"])


def _job(**extra) -> object:
    doc = {"kind": "crosstab", "dataset": "d", "by": ["region"], "domains": {"region": ["north"]}}
    return CROSSTAB.parse({**doc, **extra})


def test_weight_job_fields():
    job = _job(weight="w")
    assert job.measures == ["count", "weight"]
    assert CROSSTAB.columns_used(job, "n") == {"d": ["region", "w"]}
    with pytest.raises(JobError, match="`epsilon` with `weight` is not supported yet"):
        _job(weight="w", disclosure={"epsilon": 1.0})
    with pytest.raises(JobError, match="cannot also be a `by` column"):
        _job(weight="region")


def test_weights_travel_in_millionths_after_counts_and_sums(tmp_path):
    pd.DataFrame({"region": ["north"] * 3, "x": [1, 2, 3], "w": [0.5, 0.25, 1e-6]}).to_parquet(
        tmp_path / "d.parquet"
    )
    sources = {"d": FileSource("d", tmp_path / "d.parquet")}
    local = CROSSTAB.local_step(_job(weight="w", sum="x", bounds=[0, 10]), "n", sources)
    assert local.tolist() == [3, 600, 750_001]
    assert np.issubdtype(local.dtype, np.integer)

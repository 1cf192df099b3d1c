"""SparkSource in-process (real Spark, local mode) against DuckDB's FileSource on the same
Parquet file: grouped counts, clipped sums and weights with [where] and [bins], values outside
every band, the crosstab local step, read_text for linked jobs, summaries, a catalog table,
and one value-free line for every error (configuration, missing Java or pyspark, Spark's)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import ConfigError, DataError, JointstatsError
from jointstats.node import spark_source as spark
from jointstats.node.sources import FileSource, GroupedRows, source_for
from jointstats.protocols.crosstab import PROTOCOL as CROSSTAB
from jointstats.protocols.filters import Bands, Condition
from tests.system import need_java

SECRET = "SECRET-VALUE-123"
ODD = "odd `name\"'%"  # quoting: backticks, quotes and a percent sign in a column name
# Small and quick: one core, little memory, the C1 JIT only (a short-lived JVM)
TEST_CONF = {
    "spark.driver.memory": "512m",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


def _frame(rows: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(13)
    frame = pd.DataFrame(
        {
            "id": [f"{i:04d}" for i in rng.permutation(rows)],  # "0007" must stay "0007"
            "region": rng.choice(["north", "south", "east"], rows).astype(object),
            ODD: rng.choice(["a", "b"], rows),
            "age": rng.integers(0, 100, rows).astype(float),
            "status": rng.choice(["idp", "returnee", "host"], rows),
            "income": rng.integers(-500, 3000, rows).astype(float),
            "w": np.round(rng.uniform(0.2, 3.0, rows), 3),
        }
    )
    frame.loc[[3, 40], "region"] = None  # empty keys come back as NULL
    frame.loc[[5, 6], "age"] = None
    frame.loc[[7, 77], "income"] = None
    return frame


@pytest.fixture(scope="module")
def parquet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    need_java()
    path = tmp_path_factory.mktemp("spark") / "people.parquet"
    _frame().to_parquet(path)
    yield path
    spark.stop_spark()  # the module's JVM goes with its last test


def _spark(path: Path, **spec) -> spark.SparkSource:
    entry = {"engine": "spark", "master": "local[1]", "path": str(path), "conf": TEST_CONF}
    source = source_for("people", {**entry, **spec})
    assert isinstance(source, spark.SparkSource)
    return source


def _rows(grouped: GroupedRows) -> list[tuple]:
    """(keys, count, sum, weight) per group, in an order that does not depend on the engine."""
    none = [None] * len(grouped.keys)
    rows = zip(
        grouped.keys, grouped.counts, grouped.sums or none, grouped.weights or none, strict=True
    )
    return sorted(rows, key=lambda row: tuple(str(k) for k in row[0]))


WHERE = (Condition("status", values=("idp", "returnee")), Condition("age", high=79.0))
CASES = [  # by, value, bounds, weight, where, bins
    (["region", ODD], None, None, None, (), {}),
    (["region"], "income", (0.0, 2000.0), "w", (), {}),
    (["region", "age"], "income", (-100.0, 100.0), "w", WHERE, {"age": Bands("age", (0, 18, 60))}),
    (["age"], None, None, None, (Condition("region", values=("north",)),),
     {"age": Bands("age", (0, 18, 60, 80, 101))}),
]  # fmt: skip


def test_grouped_equals_duckdb_with_where_bins_sums_and_weights(parquet):
    source, duck = _spark(parquet), FileSource("people", parquet)
    for by, value, bounds, weight, where, bins in CASES:
        got = source.grouped(by, value, bounds, weight, where, bins)
        want = duck.grouped(by, value, bounds, weight, where, bins)
        for a, b in zip(_rows(got), _rows(want), strict=True):
            assert a[:2] == b[:2], by  # keys (NULL stays NULL, bands' labels) and counts
            np.testing.assert_allclose(
                [x for x in a[2:] if x is not None], [x for x in b[2:] if x is not None]
            )
        assert (got.value_nulls, got.value_non_numeric, got.weight_bad) == (
            want.value_nulls, want.value_non_numeric, want.weight_bad,
        )  # fmt: skip
    banded = source.grouped(["age"], bins={"age": Bands("age", (0, 18, 60))})
    assert {k[0] for k in banded.keys} == {"0-18", "18-60", "<outside every band>", None}


def test_the_crosstab_local_step_is_the_same_as_with_duckdb(parquet):
    """Same cell vector, and the same value-free error for ages in no band."""
    doc = {
        "kind": "crosstab", "dataset": "people", "by": ["region", "age"], "weight": "w",
        "where": {"status": ["idp", "returnee"], "age": {"min": 0, "max": 79},
                  "region": ["north", "south", "east"]},
        "bins": {"age": [0, 18, 60, 80]}, "domains": {"region": ["north", "south", "east"]},
    }  # fmt: skip
    sources = {
        "spark": {"people": _spark(parquet)},
        "duck": {"people": FileSource("people", parquet)},
    }
    local = {k: CROSSTAB.local_step(CROSSTAB.parse(doc), "n", s) for k, s in sources.items()}
    assert local["spark"].tolist() == local["duck"].tolist() and local["spark"].sum() > 0
    narrow = CROSSTAB.parse({**doc, "bins": {"age": [0, 18, 60]}})
    messages = []
    for chosen in sources.values():
        with pytest.raises(DataError) as failure:
            CROSSTAB.local_step(narrow, "n", chosen)
        messages.append(str(failure.value))
    assert messages[0] == messages[1] and "values outside the declared domain" in messages[0]


def test_read_text_equals_duckdb_and_keeps_ids_as_stored(parquet):
    source, duck = _spark(parquet), FileSource("people", parquet)
    bins = {"age": Bands("age", (0, 18, 60, 80))}
    got = source.read_text(["id", "region", "age"], WHERE, bins)
    want = duck.read_text(["id", "region", "age"], WHERE, bins)
    assert got.schema == want.schema  # all strings
    assert got.sort_by("id").equals(want.sort_by("id")) and got.num_rows > 0
    assert "0007" in got.column("id").to_pylist() or "0007" not in want.column("id").to_pylist()
    empty = source.read_text(["id"], (Condition("region", values=("nowhere",)),))
    assert empty.num_rows == 0 and empty.schema.names == ["id"]


def test_summary_types_a_catalog_table_and_a_uri(parquet):
    source = _spark(parquet, columns={"age": "number", "region": "text"})
    summary = source.summary()
    assert summary.rows == 600 and "through Spark (local[1])" in summary.description
    found = {c.name: (c.kind, c.engine_type, c.nulls) for c in summary.columns}
    assert found["age"] == ("number", "double", 2) and found["region"] == ("text", "string", 2)
    assert found["id"][0] == "text" and found[ODD][2] == 0
    # a table in Spark's catalog (here a temporary view of the same session)
    source._session.read.parquet(str(parquet)).createOrReplaceTempView("people_view")
    table = source_for("people", {"engine": "spark", "master": "local[1]", "table": "people_view"})
    duck = _rows(FileSource("people", parquet).grouped(["status"]))
    assert _rows(table.grouped(["status"])) == duck
    at = source_for("people", {"engine": "spark", "master": "local[1]", "uri": parquet.as_uri()})
    assert _rows(at.grouped(["status"])) == duck  # a Hadoop file system URL (file://, s3a://)
    assert at.summary().description.startswith(f"Parquet at {parquet.as_uri()} through Spark")
    assert spark._shown_uri("s3a://key:secret@lake/x/?sig=token") == "s3a://lake/x/"


def _message(run) -> str:
    with pytest.raises(JointstatsError) as failure:
        run()
    text = str(failure.value)
    assert SECRET not in text and "\n" not in text and "Traceback" not in text, text
    return text


def test_errors_are_one_value_free_line(parquet, tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + SECRET.encode() * 50 + b"PAR1")
    assert "corrupt.parquet is not a valid Parquet file" in _message(
        lambda: _spark(corrupt).grouped(["region"])
    )
    assert "does not exist" in _message(lambda: _spark(tmp_path / "gone").grouped(["region"]))
    missing = source_for("d", {"engine": "spark", "master": "local[1]", "table": "no_such_table"})
    assert "Spark's catalog has no table no_such_table" in _message(lambda: missing.columns())
    declared = _spark(parquet, columns={"region": "text"})
    assert "has no column 'nope'; declared columns: region" in _message(
        lambda: declared.grouped(["nope"])
    )
    ranged = (Condition("region", low=1.0),)
    assert "column region: holds text, but a range" in _message(
        lambda: _spark(parquet).grouped(["status"], where=ranged)
    )
    outside = tmp_path / "outside.parquet"  # a region outside the job's domain
    pd.DataFrame({"region": ["north", SECRET], "age": [1.0, 2.0]}).to_parquet(outside)
    job = CROSSTAB.parse(
        {
            "kind": "crosstab",
            "dataset": "people",
            "by": ["region"],
            "domains": {"region": ["north"]},
        }
    )
    assert "column region: values outside the declared domain" in _message(
        lambda: CROSSTAB.local_step(job, "n", {"people": _spark(outside)})
    )
    _spark(parquet).columns()  # the process's session runs on local[1]
    other = source_for("d", {"engine": "spark", "master": "local[2]", "path": str(parquet)})
    assert "a node uses one Spark master" in _message(lambda: other.columns())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"path": "x.parquet"}, "`master` is the Spark master"),
        ({"master": "local[*]"}, "give exactly one of `table`, `path` or `uri`"),
        ({"master": "local[*]", "path": "x", "table": "t"}, "give exactly one of `table`,"),
        ({"master": "local[*]", "uri": "lake/x"}, "`uri` is a URL such as hdfs://"),
        ({"master": "local", "table": "t", "query": "SELECT 1"}, "unknown field(s) query"),
        ({"master": "sc://lake:15002/;token=T", "table": "t"}, "name it with `master_env`"),
        ({"master_env": "JOINTSTATS_NO_SUCH_VAR", "table": "t"}, "`master_env` names an"),
        ({"master": "local", "table": "t", "conf": {"a": [1]}}, "`conf` maps Spark settings"),
        ({"master": "local", "table": "t", "columns": {"a": "int"}}, "type must be one of"),
    ],
)
def test_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        source_for("d", {"engine": "spark", **spec})


def test_missing_java_or_pyspark_says_what_to_install(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="needs Java 17 or later: install a JRE"):
        spark._start("d", "local[1]", {})
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(ConfigError, match=r'needs pyspark: pip install "jointstats\[spark\]"'):
        spark._start("d", "local[1]", {})


def test_an_unreachable_spark_connect_server_is_one_line_without_its_token():
    """No JVM here: a Spark Connect master is a gRPC client of a server that is not there. The
    answer comes in seconds (pyspark alone retries for ten minutes) and hides the token."""
    with pytest.raises(ConfigError) as error:
        spark._connect("d", "sc://127.0.0.1:1/;token=SECRET-TOKEN;user_id=me", {})
    text = str(error.value)
    assert "the Spark Connect server sc://127.0.0.1:1 did not answer" in text
    assert "SECRET" not in text and "\n" not in text
    assert spark.shown_master("sc://u:pw@lake:15002/;token=T") == "sc://lake:15002"
    assert spark.shown_master("local[2]") == "local[2]"


def test_a_spark_connect_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAKE_SPARK", "sc://lake:15002/;token=SECRET")
    source = source_for("d", {"engine": "spark", "master_env": "LAKE_SPARK", "table": "t"})
    assert source.master == "sc://lake:15002/;token=SECRET"
    assert "SECRET" not in spark.shown_master(source.master)

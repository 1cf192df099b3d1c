"""A Spark-backed node (pyspark in local mode, a Parquet folder) through a real federation:
a pooled crosstab with [where], [bins] and weights beside a CSV node, a linked crosstab of the
Spark node's registry against the CSV node's survey (keys normalised); released tables checked
against pandas. (Value-free errors of a Spark dataset: tests/unit/test_spark_source.py.)

One federation serves both jobs, one after the other: each starts a Spark JVM in the Spark
node's session worker, and the other parties wait for a party's local step up to the session
timeout (120 s here; it used to be a fixed 30 s, which a cold JVM on two busy cores exceeded)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jointstats.local import LocalFederation, LocalNode
from tests.spark_case import LINKED, POOLED, check_linked, check_pooled, run_job, write_people
from tests.system import need_java

SPARK_CONF = {
    "spark.driver.memory": "512m",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """`lake`: Spark over a folder of two Parquet files (ids written as the registry keeps
    them, upper case and padded); `ngo`: a CSV file; `jips`: compute-only, the helper."""
    need_java()
    root = tmp_path_factory.mktemp("spark-fed")
    lake, ngo = write_people(root, seed=2026)
    spark = {"engine": "spark", "master": "local[1]", "conf": SPARK_CONF}
    nodes = [
        LocalNode("lake", {"people": {**spark, "path": str(root / "lake")}}),
        LocalNode("ngo", {"people": root / "ngo.csv"}),
        LocalNode("jips"),
    ]
    with LocalFederation(nodes, root / "fed", session_timeout=120) as fed:
        yield fed, lake, ngo


def test_a_spark_node_in_a_pooled_and_a_linked_crosstab(federation):
    fed, lake, ngo = federation
    check_pooled(run_job(fed, POOLED), lake, ngo)
    check_linked(run_job(fed, LINKED), lake, ngo)

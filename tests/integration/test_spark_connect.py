"""A node whose Spark is a Spark Connect server (`master = "sc://host:port"`): the server's
long-running driver does the work, so no JVM starts per job. A real server (pyspark's
spark-submit, local mode, loopback) serves the Parquet folder; a pooled job twice and a linked
job run through a real federation; released tables checked against pandas."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jointstats.local import LocalFederation, LocalNode
from tests.spark_case import LINKED, POOLED, check_linked, check_pooled, run_job, write_people
from tests.system import need_java

START_SECONDS = 180.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server on loopback, from the pyspark package's own spark-submit."""
    need_java()
    import pyspark

    home = Path(pyspark.__file__).parent
    port = _free_port()
    log_path = tmp_path_factory.mktemp("spark-connect") / "server.log"
    command = [str(home / "bin" / "spark-submit"),
               "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
               "--master", "local[1]", "--driver-memory", "512m",
               "--driver-java-options", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
               "--conf", f"spark.connect.grpc.binding.port={port}",
               "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
               "--conf", "spark.ui.enabled=false", "spark-internal"]  # fmt: skip
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command,
            env={**os.environ, "SPARK_HOME": str(home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Spark Connect server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def federation(tmp_path_factory, connect_server) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("spark-connect-fed")
    lake, ngo = write_people(root, seed=2027)
    spark = {"engine": "spark", "master": connect_server, "path": str(root / "lake")}
    nodes = [
        LocalNode("lake", {"people": spark}),
        LocalNode("ngo", {"people": root / "ngo.csv"}),
        LocalNode("jips"),
    ]
    with LocalFederation(nodes, root / "fed", session_timeout=120) as fed:
        yield fed, lake, ngo


def test_a_spark_connect_node_in_pooled_and_linked_crosstabs(federation):
    fed, lake, ngo = federation
    for _ in range(2):  # the second job finds the server warm: no JVM starts at the node
        check_pooled(run_job(fed, POOLED), lake, ngo)
    check_linked(run_job(fed, LINKED), lake, ngo)

"""Session workers forked from the node's fork server keep the isolation of separate processes:
a dead worker fails its job with one clear line and the next job runs; a dead fork server is
replaced; results stay equal to plaintext."""

from __future__ import annotations

import time

import psutil
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import AGENCIES, JOB, pooled
from tests.plaintext import expected_crosstab


def _fork_server(fed: LocalFederation, node: str) -> psutil.Process:
    children = psutil.Process(fed.processes[node].pid).children()
    (server,) = [c for c in children if "--fork-server" in c.cmdline()]
    return server


def _spares(fed: LocalFederation, node: str) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while True:
        spares = [c for c in _fork_server(fed, node).children() if c.status() != "zombie"]
        if spares or time.monotonic() > deadline:
            return spares
        time.sleep(0.05)


@pytest.fixture(scope="module")
def fed(data_dir, tmp_path_factory):
    nodes = [LocalNode(a, {"households": data_dir / a / "households.csv"}) for a in AGENCIES]
    with LocalFederation(nodes, tmp_path_factory.mktemp("fork"), session_timeout=30) as fed:
        yield fed


def test_workers_are_forked_and_answer_as_plaintext(fed, data_dir):
    result = fed.client.run(JOB, timeout=60)
    expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], 10)
    assert list(result.table["suppressed"]) == list(expected["suppressed"])
    released = ~result.table["suppressed"]
    assert list(result.table["count"][released]) == list(expected["count"][released])
    for node in AGENCIES:
        assert _spares(fed, node)  # the spare is a child of the fork server, not a new python


def test_a_killed_worker_fails_its_job_naming_the_node_then_jobs_run(fed):
    (spare,) = _spares(fed, "drc")
    spare.kill()
    spare.wait(10)
    with pytest.raises(JobFailed, match="drc") as failed:
        fed.client.run(JOB, timeout=60)
    assert "\n" not in str(failed.value) and "worker" in str(failed.value)
    assert fed.client.run(JOB, timeout=60).table["count"].notna().any()


def test_a_killed_fork_server_is_replaced(fed):
    server = _fork_server(fed, "nrc")
    spare_before = _spares(fed, "nrc")
    server.kill()
    server.wait(10)
    for spare in spare_before:  # a started spare lives on: its session still runs
        assert spare.is_running()
    assert fed.client.run(JOB, timeout=60).table["count"].notna().any()
    assert fed.client.run(JOB, timeout=60).table["count"].notna().any()
    assert _fork_server(fed, "nrc").pid != server.pid


def test_a_one_shot_federation_shares_one_fork_server_and_leaves_nothing_running(data_dir):
    nodes = [LocalNode(a, {"households": data_dir / a / "households.csv"}) for a in AGENCIES]
    with LocalFederation(nodes, session_timeout=30) as fed:  # no workdir: one-shot
        result = fed.client.run(JOB, timeout=60)
        assert fed._fork_server is not None
        shared = psutil.Process(fed._fork_server.pid)
        for node in AGENCIES:  # no node started a fork server of its own
            own = psutil.Process(fed.processes[node].pid).children()
            assert not [c for c in own if "--fork-server" in c.cmdline()]
        services = {name: fed.processes[name].pid for name in [*AGENCIES, "coordinator"]}
        forked = shared.children()
        # the coordinator and the nodes too are forks of the shared server (its imports are
        # theirs), and the spares it forked for the nodes
        assert set(services.values()) <= {p.pid for p in forked}
        workers = [p for p in forked if p.pid not in services.values()]
        assert workers
        workdir = fed.workdir
    expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], 10)
    assert list(result.table["suppressed"]) == list(expected["suppressed"])
    assert not workdir.exists()
    _, alive = psutil.wait_procs([shared, *forked], timeout=10)
    assert not alive

"""A dead peer fails the job quickly with its name; a restarted coordinator keeps its records."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import psutil
import pytest

from jointstats.audit import verify
from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from jointstats.node.workers import SPARE_WORKERS
from tests.conftest import AGENCIES, JOB, REPO, pooled
from tests.plaintext import expected_crosstab
from tests.proxy import CuttableProxy

SLOW = {"JOINTSTATS_SESSION_WORKER": "tests.fakes.slow_worker", "PYTHONPATH": str(REPO)}


def _federation(data_dir: Path, workdir: Path, env: dict | None = None) -> LocalFederation:
    nodes = [
        LocalNode(a, {"households": data_dir / a / "households.csv"}, env=env or {})
        for a in AGENCIES
    ]
    nodes.append(LocalNode("jips", env=env or {}))
    return LocalFederation(nodes, workdir, session_timeout=30)


def _session_workers(node_pid: int) -> list[psutil.Process]:
    children = psutil.Process(node_pid).children(recursive=True)
    return [c for c in children if "worker" in " ".join(c.cmdline())]


def _wait_running(fed: LocalFederation, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while fed.client.status(job_id).state != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("victim", "inputs", "afterwards"),
    [
        ("nrc", list(AGENCIES), ["unhcr", "drc"]),  # a data node; jips fills in afterwards
        ("jips", ["unhcr", "drc"], list(AGENCIES)),  # the compute-only node
    ],
)
def test_a_party_killed_mid_session_fails_the_job_naming_it(
    data_dir, tmp_path, victim, inputs, afterwards
):
    with _federation(data_dir, tmp_path / "fed", SLOW) as fed:
        job_id = fed.client.submit({**JOB, "inputs": inputs})
        _wait_running(fed, job_id)
        time.sleep(1.0)
        before = {s: _session_workers(fed.processes[s].pid) for s in ("unhcr", "drc")}
        assert len(before["unhcr"]) == SPARE_WORKERS  # the busy one + the remaining spares
        fed.stop_process(victim, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(JobFailed, match=victim):
            fed.client.wait(job_id, timeout=60)
        assert time.monotonic() - started < 60
        time.sleep(1.0)
        for survivor in ("unhcr", "drc"):
            # the aborted session's worker was killed; the spares were refilled
            assert sum(not w.is_running() for w in before[survivor]) == 1
            assert len(_session_workers(fed.processes[survivor].pid)) == SPARE_WORKERS
        result = fed.client.run({**JOB, "inputs": afterwards}, timeout=60)
        assert victim not in result.metadata["parties"]


def test_records_survive_a_coordinator_restart_and_nodes_reconnect(data_dir, tmp_path):
    with _federation(data_dir, tmp_path / "fed") as fed:
        job_id = fed.client.submit(JOB)
        fed.client.wait(job_id, timeout=60)
        fed.restart_coordinator()
        shutdown = fed.log("coordinator").read_text()
        assert "Traceback" not in shutdown and "CancelledError" not in shutdown
        assert fed.client.status(job_id).state == "released"
        assert fed.client.result(job_id).table["count"].notna().any()
        fed.client.wait_for_nodes([*AGENCIES, "jips"], timeout=30)
        result = fed.client.run(JOB, timeout=60)
        expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], 10)
        assert list(result.table["suppressed"]) == list(expected["suppressed"])


def test_sigterm_aborts_sessions_cleanly_and_flushes_the_audit_log(data_dir, tmp_path):
    with _federation(data_dir, tmp_path / "fed", SLOW) as fed:
        job_id = fed.client.submit({**JOB, "inputs": list(AGENCIES)})
        _wait_running(fed, job_id)
        node = fed.processes["drc"]
        workers = _session_workers(node.pid)
        fed.stop_process("drc", signal.SIGTERM)
        assert node.returncode == 0
        with pytest.raises(JobFailed, match="drc"):
            fed.client.wait(job_id, timeout=60)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        log = fed.workdir / "drc" / "audit.jsonl"
        assert verify(log).ok
        events = [e["event"] for e in map(json.loads, log.read_text().splitlines())]
        assert events[-1] == "SESSION_ABORTED"


def test_ten_jobs_at_once_all_finish_correctly(federation, data_dir):
    expected = {
        k: expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], k) for k in range(10, 20)
    }
    jobs = {}
    for k in expected:
        job = {**JOB, "disclosure": {"min_cell": k}}
        jobs[federation.client.submit(job)] = k
    for job_id, k in jobs.items():
        table = federation.client.wait(job_id, timeout=240).table
        assert list(table["suppressed"]) == list(expected[k]["suppressed"])
        released = ~expected[k]["suppressed"]
        assert list(table.loc[released, "count"]) == list(expected[k].loc[released, "count"])


def test_a_network_cut_fails_the_job_cleanly_and_the_node_reconnects(data_dir, tmp_path):
    holder: dict[str, LocalFederation] = {}
    proxy = CuttableProxy(lambda: holder["fed"].address)
    nodes = [
        LocalNode(
            a,
            {"households": data_dir / a / "households.csv"},
            env=SLOW,
            coordinator=proxy.address if a == "nrc" else "",
        )
        for a in AGENCIES
    ]
    fed = LocalFederation(nodes, tmp_path / "fed", session_timeout=30)
    holder["fed"] = fed
    with fed:
        job_id = fed.client.submit(JOB)
        _wait_running(fed, job_id)
        proxy.cut()
        with pytest.raises(JobFailed, match="nrc"):
            fed.client.wait(job_id, timeout=60)
        time.sleep(3)
        proxy.restore()
        fed.client.wait_for_nodes(list(AGENCIES), timeout=30)
        result = fed.client.run(JOB, timeout=60)
        expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], 10)
        assert list(result.table["suppressed"]) == list(expected["suppressed"])
    proxy.close()


def test_status_shows_each_nodes_phase_while_running(data_dir, tmp_path):
    with _federation(data_dir, tmp_path / "fed", SLOW) as fed:
        job_id = fed.client.submit(JOB)
        deadline = time.monotonic() + 30
        while True:
            nodes = fed.client.status(job_id).nodes
            if all(state == "running" and reason == "mpc" for state, reason in nodes.values()):
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(0.05)
        fed.client.wait(job_id, timeout=60)

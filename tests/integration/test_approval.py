"""Manual approval: a node holds each job until its operator decides with the real CLI, in
another process, against the node's config; the queue survives a restart of the node; the
egress statement's counts match the bytes the audit log records as sent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import JOB, REGIONS, STATUSES

EXE = str(Path(sys.executable).with_name("jointstats"))
PURPOSE = "quarterly displacement report"


def _cli(fed: LocalFederation, node: str, *args: str) -> subprocess.CompletedProcess:
    config = fed.workdir / node / "node.toml"
    return subprocess.run(
        [EXE, "node", *args, "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def _events(fed: LocalFederation, node: str, job_id: str) -> list[dict]:
    lines = (fed.workdir / node / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["job_id"] == job_id]


def _until(condition, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _waiting(fed: LocalFederation, job_id: str, node: str) -> bool:
    state, reason = fed.client.status(job_id).nodes[node]
    return state == "waiting" and reason == f"waiting for approval at {node}"


@pytest.fixture(scope="module")
def fed(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    nodes = [
        LocalNode("unhcr", {"households": data_dir / "unhcr" / "households.csv"}),
        LocalNode(
            "drc",
            {"households": data_dir / "drc" / "households.csv"},
            policy={"approval": "manual"},
        ),
        LocalNode("jips"),
    ]
    with LocalFederation(nodes, tmp_path_factory.mktemp("approval"), session_timeout=60) as f:
        yield f


def test_held_until_approved_then_bytes_match_the_statement(fed: LocalFederation):
    job = {**JOB, "inputs": ["unhcr", "drc"], "purpose": PURPOSE}
    job_id = fed.client.submit(job)
    _until(lambda: _waiting(fed, job_id, "drc"))
    status = subprocess.run(
        [EXE, "status", job_id, "--config", str(fed.workdir / "analyst" / "client.toml")],
        capture_output=True,
        text=True,
    )
    assert "waiting for approval at drc" in status.stdout
    pending = _cli(fed, "drc", "pending")
    assert job_id in pending.stdout and "analyst" in pending.stdout and PURPOSE in pending.stdout
    shown = _cli(fed, "drc", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "12 Shamir shares of cell counts to each of unhcr, jips" in shown.stdout
    assert "released table: 4 x 3 = 12 cells" in shown.stdout
    time.sleep(1.0)
    assert fed.client.status(job_id).state == "submitted"  # still held
    approved = _cli(fed, "drc", "approve", job_id)
    assert approved.returncode == 0, approved.stderr
    result = fed.client.wait(job_id, timeout=90)
    assert result.metadata["inputs"] == ["unhcr", "drc"]
    events = [e["event"] for e in _events(fed, "drc", job_id)]
    assert events == [
        "JOB_RECEIVED",
        "JOB_ACCEPTED",
        "JOB_QUEUED",
        "JOB_APPROVED",
        "SESSION_STARTED",
        "RESULT_RELEASED",
    ]
    entries = _events(fed, "drc", job_id)
    statement = entries[2]["fields"]["egress"]
    released = entries[-1]["fields"]
    sent = {(r["to"], r["kind"], r["phase"]): r for r in released["sent"]}
    for flow in statement["outflows"]:
        if flow["payload_bytes"] is None:
            continue
        for peer in flow["to"]:
            row = sent[(peer, flow["kind"], flow["phase"])]
            # the statement's values are exactly the payload; framing per message: a 5-byte
            # entry header and 8 program-counter bytes, and a 16-byte tag per sealed frame,
            # which batches what one loop turn sends (node/relay_link.py)
            assert row["payload_bytes"] == flow["payload_bytes"] == 12 * 8
            framed = row["payload_bytes"] + row["messages"] * (5 + 8)
            assert framed + 16 <= row["bytes"] <= framed + row["messages"] * 16
    assert set(released["bytes_sent"]) == {"unhcr", "jips"}
    shown = subprocess.run(
        [EXE, "audit", "show", str(fed.workdir / "drc" / "audit.jsonl")],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"job {job_id}: sent (peer, kind, phase)" in shown.stdout
    assert "statement: 96" in shown.stdout


def test_denied_with_the_operators_reason(fed: LocalFederation):
    job_id = fed.client.submit({**JOB, "inputs": ["unhcr", "drc"]})
    _until(lambda: _waiting(fed, job_id, "drc"))
    denied = _cli(fed, "drc", "deny", job_id, "--reason", "not before the board meets")
    assert denied.returncode == 0, denied.stderr
    with pytest.raises(JobFailed, match="denied by its operator: not before the board meets"):
        fed.client.wait(job_id, timeout=30)
    assert [e["event"] for e in _events(fed, "drc", job_id)][-1] == "JOB_DENIED"
    again = _cli(fed, "drc", "approve", job_id)
    assert again.returncode != 0 and "denied already" in again.stderr


def test_queue_survives_a_node_restart(fed: LocalFederation):
    job_id = fed.client.submit({**JOB, "inputs": ["unhcr", "drc"]})
    _until(lambda: _waiting(fed, job_id, "drc"))
    fed.stop_process("drc")
    approved = _cli(fed, "drc", "approve", job_id)  # while the node is down
    assert approved.returncode == 0, approved.stderr
    fed.restart_node("drc")
    result = fed.client.wait(job_id, timeout=90)
    assert result.metadata["inputs"] == ["unhcr", "drc"]
    events = [e["event"] for e in _events(fed, "drc", job_id)]
    assert events[-3:] == ["JOB_APPROVED", "SESSION_STARTED", "RESULT_RELEASED"]


def test_not_approved_before_expiry_fails(fed: LocalFederation):
    job = {**JOB, "inputs": ["unhcr", "drc"]}
    job_id = fed.client.submit(job, ttl=3.0)
    _until(lambda: _waiting(fed, job_id, "drc"))
    with pytest.raises(JobFailed, match="not approved before the job's signed expiry"):
        fed.client.wait(job_id, timeout=30)
    assert [e["event"] for e in _events(fed, "drc", job_id)][-1] == "JOB_EXPIRED"
    late = _cli(fed, "drc", "approve", job_id)
    assert late.returncode != 0


def test_linked_statement_counts_match_what_was_sent(tmp_path: Path):
    rng = np.random.default_rng(7)
    ids = [f"id{i:05d}" for i in range(400)]
    registry = pd.DataFrame({"pid": ids[:300], "region": rng.choice(REGIONS, 300)})
    survey = pd.DataFrame({"pid": ids[100:], "status": rng.choice(STATUSES, 300)})
    registry.to_csv(tmp_path / "registry.csv", index=False)
    survey.to_csv(tmp_path / "survey.csv", index=False)
    manual = {"approval": "manual"}
    nodes = [
        LocalNode("ministry", {"registry": tmp_path / "registry.csv"}, policy=manual),
        LocalNode("survey", {"survey": tmp_path / "survey.csv"}, policy=manual),
        LocalNode("jips"),
    ]
    job = {
        "kind": "linked_crosstab",
        "helper": "jips",
        "left": {"node": "ministry", "dataset": "registry", "key": "pid", "by": ["region"]},
        "right": {"node": "survey", "dataset": "survey", "key": "pid", "by": ["status"]},
        "domains": {"region": REGIONS, "status": STATUSES},
        "disclosure": {"min_cell": 3},
        "purpose": "linkage test",
    }
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        job_id = fed.client.submit(job)
        for node in ("ministry", "survey"):
            _until(lambda node=node: _waiting(fed, job_id, node))
            shown = _cli(fed, node, "show", job_id)
            assert "300 keyed 16-byte fingerprints of `pid` to jips" in shown.stdout
            assert _cli(fed, node, "approve", job_id).returncode == 0
        result = fed.client.wait(job_id, timeout=90)
        n = result.metadata["matched"]
        assert n == 200
        for node in ("ministry", "survey"):
            entries = _events(fed, node, job_id)
            statement = next(e for e in entries if e["event"] == "JOB_QUEUED")["fields"]["egress"]
            sent = {
                (r["to"], r["kind"], r["phase"]): r
                for r in entries[-1]["fields"]["sent"]
                if r["kind"] == "DATA"
            }
            predicted: dict[tuple, int] = {}
            for flow in statement["outflows"]:
                if flow["kind"] != "DATA" or flow["payload_bytes"] is None:
                    continue
                size = flow["payload_bytes"]
                if "matched rows" in flow["what"]:  # n rows of this width, not the bound
                    width = (flow["payload_bytes"] - flow["header_bytes"]) // 8 // 300
                    size = n * width * 8 + flow["header_bytes"]
                for peer in flow["to"]:
                    key = (peer, "DATA", flow["phase"])
                    predicted[key] = predicted.get(key, 0) + size
            assert {k: r["payload_bytes"] for k, r in sent.items()} == predicted
            for row in sent.values():  # framing: 5 header bytes a message, a 16-byte tag a frame
                framed = row["payload_bytes"] + row["messages"] * 5
                assert framed <= row["bytes"] <= framed + row["messages"] * 16

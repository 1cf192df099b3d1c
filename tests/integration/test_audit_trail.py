"""Every node keeps a signed, hash-chained account of what it did for each job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jointstats.audit import verify
from jointstats.keys import Roster
from tests.conftest import JOB


def _events(path: Path, job_id: str) -> list[dict]:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in entries if e["job_id"] == job_id]


def test_each_party_logs_the_job_from_offer_to_release(federation):
    job_id = federation.client.submit(JOB)
    result = federation.client.wait(job_id, timeout=120)
    roster = Roster.load(federation.workdir / "roster.toml")
    digests = set()
    for node in ("unhcr", "drc", "nrc"):
        log = federation.workdir / node / "audit.jsonl"
        assert verify(log, roster.get(node).sign_public).ok
        events = _events(log, job_id)
        assert [e["event"] for e in events] == [
            "JOB_RECEIVED",
            "JOB_ACCEPTED",
            "SESSION_STARTED",
            "RESULT_RELEASED",
        ]
        received, accepted, started, released = (e["fields"] for e in events)
        assert json.loads(received["envelope"])["job"] == JOB
        assert accepted["columns"] == {"households": JOB["by"]}
        assert started["parties"] == result.metadata["parties"]
        assert released["rows_used"] > 0
        digests.add(released["table_sha256"])
        assert events[1]["principal"] == "analyst"
    assert len(digests) == 1  # every party released the same table


def test_audit_verify_cli_detects_a_changed_entry(federation, tmp_path: Path):
    federation.client.run(JOB, timeout=120)
    copy = tmp_path / "audit.jsonl"
    copy.write_text((federation.workdir / "unhcr" / "audit.jsonl").read_text())
    exe = str(Path(sys.executable).with_name("jointstats"))
    ok = subprocess.run([exe, "audit", "verify", str(copy)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    lines = copy.read_text().splitlines()
    lines[1] = lines[1].replace('"JOB_ACCEPTED"', '"JOB_REFUSED"')
    copy.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([exe, "audit", "verify", str(copy)], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "line 2" in bad.stderr and "Traceback" not in bad.stderr

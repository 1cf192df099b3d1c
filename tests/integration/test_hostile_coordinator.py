"""A hostile coordinator: it skews the threshold per party, alters a released table, or runs
a job with parties the analyst did not sign. Each attack is refused or yields nothing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from jointstats.results import ResultError
from tests.conftest import AGENCIES, JOB, REPO


def _federation(data_dir: Path, workdir: Path, coordinator: str, extra=()) -> LocalFederation:
    nodes = [LocalNode(a, {"households": data_dir / a / "households.csv"}) for a in AGENCIES]
    nodes += [LocalNode(name) for name in ("jips", *extra)]
    return LocalFederation(nodes, workdir, 30, coordinator_module=coordinator)


def _events(fed: LocalFederation, node: str) -> list[dict]:
    lines = (fed.workdir / node / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


ENDS = ("SESSION_MISMATCH", "SESSION_ABORTED", "SESSION_FAILED")


def test_a_threshold_skewed_per_party_stops_the_session_before_any_share(data_dir, tmp_path):
    with (
        _federation(data_dir, tmp_path / "fed", "tests.fakes.skewing_coordinator") as fed,
        pytest.raises(JobFailed, match="different session description") as failure,
    ):
        fed.client.run(JOB, timeout=90)
    assert "count" not in str(failure.value)
    mismatches = []
    for node in AGENCIES:
        # the first to notice reports the mismatch; the others are aborted with it, or see the
        # coordinator close their relay first (a race): either way their session ends unreleased
        events = _events(fed, node)
        assert "RESULT_RELEASED" not in [e["event"] for e in events]
        ends = [e["event"] for e in events if e["event"] in ENDS]
        assert ends, (node, [e["event"] for e in events])
        mismatches += [
            e for e in events
            if e["event"] == "SESSION_MISMATCH"
            and "different session description" in e["fields"]["reason"]
        ]  # fmt: skip
    assert mismatches


def test_a_result_altered_after_the_release_is_refused(data_dir, tmp_path):
    with _federation(data_dir, tmp_path / "fed", "tests.fakes.altering_coordinator") as fed:
        job_id = fed.client.submit(JOB)
        with pytest.raises(ResultError, match="does not match .*'s signature"):
            fed.client.wait(job_id, timeout=90)
        client_config = fed.workdir / "analyst" / "client.toml"
        command = [sys.executable, "-m", "jointstats.cli", "result", job_id]
        cli = subprocess.run(
            [*command, "--config", str(client_config), "--out", str(tmp_path / "t.csv")],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
    assert cli.returncode == 5, cli.stderr
    assert "signature" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "t.csv").exists()


def test_parties_the_analyst_did_not_sign_are_refused(data_dir, tmp_path):
    job = copy.deepcopy(JOB)
    job["inputs"] = ["unhcr", "drc"]
    coordinator = "tests.fakes.substituting_coordinator"
    with _federation(data_dir, tmp_path / "fed", coordinator, extra=("ocha",)) as fed:
        assert fed.client.plan(job).parties == ("unhcr", "drc", "jips")
        with pytest.raises(JobFailed, match="differ from those the analyst signed"):
            fed.client.run(job, timeout=90)

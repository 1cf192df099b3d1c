"""The data owner's commands as an operator runs them: grants, preflight, rehearse."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from jointstats.keys import Roster
from tests.e2e.owner_world import owner_world

POOLED = """
kind = "crosstab"
dataset = "households"
by = ["region", "displacement_status"]
sum = "income"
bounds = [0, 500]
[domains]
region = ["north", "south", "east", "west"]
displacement_status = ["idp", "returnee", "host"]
[disclosure]
min_cell = 10
"""
LINKED = """
kind = "linked_crosstab"
helper = "jips"
[left]
node = "unhcr"
dataset = "households"
key = "case_id"
by = ["region"]
[right]
node = "survey"
dataset = "household_survey"
key = "national_id"
by = ["employment"]
[domains]
region = ["north", "south", "east", "west"]
employment = ["employed", "unemployed", "inactive"]
[disclosure]
min_cell = 5
"""


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = shutil.which("jointstats") or str(Path(sys.executable).with_name("jointstats"))
    return subprocess.run(
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_grants_lists_analysts_columns_expiry_and_epsilon_left(tmp_path: Path) -> None:
    config = owner_world(tmp_path)
    run = _run("node", "grants", "--config", str(config), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    days = (datetime.date(2027, 6, 30) - datetime.datetime.now(datetime.UTC).date()).days
    assert "analyst alice" in run.stdout
    assert f"until 2027-06-30 ({days} days left); purpose: IDP profiling 2026" in run.stdout
    assert "households: region, displacement_status" in run.stdout
    assert "households: 1 budget, 0 spent, 1 left" in run.stdout


def test_preflight_passes_a_good_node_and_a_compute_only_node(tmp_path: Path) -> None:
    config = owner_world(tmp_path)
    run = _run("node", "check", "--config", str(config), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok: keys match the roster entry of unhcr (node)" in run.stdout
    assert "all datasets ok" in run.stdout
    doc = tomllib.loads(config.read_text())
    doc.update(name="jips", keys="keys/jips")
    del doc["datasets"]
    (tmp_path / "jips.toml").write_text(tomli_w.dumps(doc))
    run = _run("node", "check", "jips.toml", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "compute-only" in run.stdout


def test_preflight_names_each_problem_and_fails(tmp_path: Path) -> None:
    config = owner_world(tmp_path)
    roster = Roster.load(tmp_path / "roster.toml")
    doc = tomllib.loads(config.read_text())
    doc["keys"] = "keys/jips"  # another member's keys
    doc["policy"]["analysts"][0]["fingerprint"] = roster.get("alice").identity_fingerprint
    doc["policy"]["partners"] = ["jips", "wfp"]
    config.write_text(tomli_w.dumps(doc))
    run = _run("node", "check", "--config", str(config), "--reach", cwd=tmp_path)
    assert run.returncode == 2
    assert "keys are 'jips''s" in run.stdout
    assert "certificate is issued to 'jips'" in run.stdout
    assert "pins another TLS certificate, X25519 key, Ed25519 signing key" in run.stdout
    assert "that is alice's identity fingerprint; use the signing one" in run.stdout
    assert "partners names wfp, not a node of the roster" in run.stdout
    assert "did not complete a TLS handshake" in run.stdout  # nothing listens at :50051
    assert run.stderr.strip().splitlines() == ["error: node unhcr: 6 problem(s) found, see above"]


def test_preflight_reaches_a_running_coordinator(federation, tmp_path: Path) -> None:
    node = federation.workdir / "unhcr" / "node.toml"
    run = _run("node", "check", "--config", str(node), "--reach", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "is reachable (mutual TLS)" in run.stdout


def test_client_toml_with_an_unknown_key_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text('roster = "r.toml"\nkeys = "k"\ncoordinater = "x"\n')
    run = _run("status", "abc", "--config", "client.toml", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "unknown key(s): coordinater" in run.stderr


@pytest.mark.parametrize("kind", ["crosstab", "linked_crosstab"])
def test_rehearse_runs_the_job_on_invented_data_shaped_like_the_dataset(
    tmp_path: Path, kind: str
) -> None:
    config = owner_world(tmp_path)
    doc = tomllib.loads(config.read_text())
    # the schema only: declared columns; the file holds none of the linked job's key column
    doc["datasets"]["households"]["columns"] = {"region": "text", "case_id": "text"}
    doc["datasets"]["households"]["path"] = "missing.csv"  # never opened
    config.write_text(tomli_w.dumps(doc))
    (tmp_path / "job.toml").write_text(POOLED if kind == "crosstab" else LINKED)
    run = _run("node", "rehearse", "job.toml", "--config", str(config), "--rows", "300",
               "--workdir", "rh", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert f"rehearsal of a {kind} job on INVENTED data" in out
    assert "egress statement for unhcr:" in out and "released table:" in out
    assert "unhcr: audit log intact" in out and "RESULT_RELEASED" in out
    if kind == "crosstab":
        assert "12 Shamir shares of cell counts to each of" in out
        assert "partner-1" in out and "compute-1" in out
    else:
        assert "up to 300 keyed 16-byte fingerprints of `case_id` to jips" in out
        assert "matched" in out or "n (matched)" in out
    assert "sent " in out and " bytes (payload " in out
    assert "suppressed" in out
    written = sorted(p.name for p in (tmp_path / "rh" / "data" / "unhcr").iterdir())
    assert written == ["households.parquet"]

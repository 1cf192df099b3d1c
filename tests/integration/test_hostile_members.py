"""Members that misconfigure or misuse their keys: a second process with a member's keys, a
node whose config names another member, a second coordinator on a port in use. Each is refused
with a one-line error and a non-zero exit, and the running federation is unharmed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from jointstats.keys import new_member
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import AGENCIES, JOB, REPO, pooled
from tests.plaintext import expected_crosstab


@pytest.fixture(scope="module")
def fed(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    nodes = [LocalNode(a, {"households": data_dir / a / "households.csv"}) for a in AGENCIES]
    with LocalFederation(nodes, tmp_path_factory.mktemp("fed"), session_timeout=30) as federation:
        yield federation


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jointstats.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _refusal(process: subprocess.Popen, seconds: float) -> tuple[int, str]:
    """Exit code and the last line on stderr (the CLI's one-line error; logs come before)."""
    code, err = _finished(process, seconds)
    return code, err.strip().splitlines()[-1]


def _finished(process: subprocess.Popen, seconds: float) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"still running after {seconds} s: it was not refused")
    assert "Traceback" not in err, err
    return process.returncode, err


def _node_config(fed: LocalFederation, name: str, state_dir: Path, keys: Path) -> Path:
    """A copy of `name`'s node config with its own state dir and the given keys."""
    config = tomllib.loads((fed.workdir / name / "node.toml").read_text())
    config.update(state_dir=str(state_dir), keys=str(keys), roster=str(fed.workdir / "roster.toml"))
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "node.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_second_process_with_a_members_keys_is_refused_and_the_real_node_keeps_working(
    fed, data_dir, tmp_path
):
    twin_dir = tmp_path / "unhcr-twin"
    config = _node_config(fed, "unhcr", twin_dir, fed.workdir / "unhcr" / "keys")
    twin = _cli("node", "serve", "--config", str(config))
    try:
        # while the coordinator gives unhcr's first stream time to prove itself dead, it works
        time.sleep(2.0)
        first = fed.client.run(JOB, timeout=60)
        code, err = _finished(twin, 45)
    finally:
        if twin.poll() is None:
            twin.kill()
            twin.wait()
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: coordinator refused this node: unhcr is already connected")
    assert "connected to coordinator" not in err  # it never was: its stream was refused
    assert "connected to coordinator" in fed.log("unhcr").read_text()
    assert "another node running with these keys" in line
    second = fed.client.submit(JOB)
    fed.client.wait(second, timeout=60)
    expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], 10)
    assert list(first.table["suppressed"]) == list(expected["suppressed"])
    real = {(e["event"], e["job_id"]) for e in _events(fed.workdir / "unhcr" / "audit.jsonl")}
    assert ("RESULT_RELEASED", second) in real
    assert not any(e["event"] == "JOB_RECEIVED" for e in _events(twin_dir / "audit.jsonl"))
    assert {n.name for n in fed.client.nodes() if n.online} == set(AGENCIES)
    refusals = [
        e
        for e in _events(fed.workdir / "coordinator" / "audit.jsonl")
        if e["event"] == "AUTH_REFUSED" and e["fields"].get("method") == "Connect"
    ]
    assert [e["principal"] for e in refusals] == ["unhcr"]
    assert "already connected" in refusals[0]["fields"]["reason"]


def test_a_node_whose_config_names_another_member_does_not_start(fed, tmp_path):
    new_member(tmp_path / "ghost" / "keys", "ghost", "node")
    config = _node_config(fed, "unhcr", tmp_path / "ghost", tmp_path / "ghost" / "keys")
    code, line = _refusal(_cli("node", "serve", "--config", str(config)), 30)
    assert code == 2  # ConfigError
    assert line.startswith("error: this node's config names it 'unhcr'")
    assert "'ghost'" in line


def test_a_second_coordinator_on_a_port_in_use_does_not_start(fed, tmp_path):
    workdir = fed.workdir / "coordinator"
    config = {
        "listen": fed.address,
        "roster": str(fed.workdir / "roster.toml"),
        "keys": str(workdir / "keys"),
        "db": str(tmp_path / "second.sqlite"),
    }
    path = tmp_path / "coordinator.toml"
    path.write_text(tomli_w.dumps(config))
    code, line = _refusal(_cli("coordinator", "serve", "--config", str(path)), 30)
    assert code != 0
    assert line.startswith(f"error: cannot listen on {fed.address}: the port is in use")
    assert {n.name for n in fed.client.nodes() if n.online} == set(AGENCIES)

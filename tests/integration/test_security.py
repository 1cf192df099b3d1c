"""Hostile peers, an altering relay and strangers: refused, and nothing executed or changed."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointstats.client import Client
from jointstats.errors import AuthError, JobError, JobFailed
from jointstats.keys import Identity, Roster, new_member
from jointstats.local import LocalFederation, LocalNode
from jointstats.transport import channel_credentials, channel_options
from jointstats.v1 import wire_pb2, wire_pb2_grpc
from tests.conftest import AGENCIES, JOB, REPO
from tests.fakes.bomb import bomb_payload


def _nodes(data_dir: Path, env: dict[str, dict[str, str]] | None = None) -> list[LocalNode]:
    env = env or {}
    return [
        LocalNode(a, {"households": data_dir / a / "households.csv"}, env=env.get(a, {}))
        for a in AGENCIES
    ]


def test_crafted_pickle_from_a_peer_is_never_executed(data_dir, tmp_path):
    marker = tmp_path / "pwned"
    os.environ["JOINTSTATS_TEST_MARKER"] = str(marker)
    try:
        pickle.loads(bomb_payload())  # the payload is live: unpickling it creates the marker
        assert marker.exists()
        marker.unlink()
        evil = {
            "JOINTSTATS_SESSION_WORKER": "tests.fakes.pickle_bomb_worker",
            "JOINTSTATS_TEST_MARKER": str(marker),
            "PYTHONPATH": str(REPO),
        }
        with LocalFederation(_nodes(data_dir, {"drc": evil}), tmp_path / "fed", 30) as fed:
            job_id = fed.client.submit(JOB)
            # garbage shares may fail the job; what matters is that nothing ran
            with contextlib.suppress(JobFailed):
                fed.client.wait(job_id, timeout=90)
            status = fed.client.status(job_id)
            assert status.finished
    finally:
        os.environ.pop("JOINTSTATS_TEST_MARKER", None)
    assert not marker.exists(), "a peer's pickle was executed"


def test_an_altered_relay_frame_fails_the_session(data_dir, tmp_path):
    nodes = _nodes(data_dir, {a: {"PYTHONPATH": str(REPO)} for a in AGENCIES})
    with (
        LocalFederation(
            nodes, tmp_path / "fed", 30, coordinator_module="tests.fakes.tampering_coordinator"
        ) as fed,
        pytest.raises(JobFailed, match="failed authentication"),
    ):
        fed.client.run(JOB, timeout=90)


def test_stranger_certificates_are_refused(federation, tmp_path):
    new_member(tmp_path / "mallory", "analyst", "analyst")  # same name, unknown key
    stranger = Client(federation.address, federation.workdir / "roster.toml", tmp_path / "mallory")
    with pytest.raises(AuthError, match="certificate in the coordinator's roster"):
        stranger.submit(JOB)
    stranger.close()


def _channel(fed: LocalFederation, key_dir: Path) -> grpc.Channel:
    """A raw mTLS channel to the coordinator with the keys in key_dir."""
    identity = Identity.load(key_dir)
    roster = Roster.load(fed.workdir / "roster.toml")
    credentials = channel_credentials(identity, roster)
    return grpc.secure_channel(fed.address, credentials, options=channel_options())


def test_a_node_with_an_unknown_certificate_cannot_join(federation, tmp_path):
    new_member(tmp_path / "rogue", "unhcr", "node")
    channel = _channel(federation, tmp_path / "rogue")
    hello = wire_pb2.NodeMessage(hello=wire_pb2.Hello(datasets=["households"]))
    call = wire_pb2_grpc.CoordinatorStub(channel).Connect(iter([hello]), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    # refused in the TLS handshake: the roster is the coordinator's only trust store
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Socket closed" in refused.value.details()
    channel.close()


def test_an_analyst_cannot_pose_as_a_party(federation):
    channel = _channel(federation, federation.workdir / "analyst" / "keys")
    frame = wire_pb2.RelayFrame(session_id="x", from_pid=0, to_pid=-1)
    call = wire_pb2_grpc.CoordinatorStub(channel).Relay(iter([frame]), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        next(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call Relay" in refused.value.details()
    channel.close()
    log = federation.workdir / "coordinator" / "audit.jsonl"
    refusals = [
        e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "AUTH_REFUSED"
    ]
    assert any("may not call Relay" in e["fields"]["reason"] for e in refusals)


def test_a_coordinator_that_alters_a_job_cannot_get_it_run(data_dir, tmp_path):
    nodes = _nodes(data_dir, {a: {"PYTHONPATH": str(REPO)} for a in AGENCIES})
    with LocalFederation(
        nodes, tmp_path / "fed", 30, coordinator_module="tests.fakes.forging_coordinator"
    ) as fed:
        job_id = fed.client.submit(JOB)
        with pytest.raises(JobFailed, match="signature does not match"):
            fed.client.wait(job_id, timeout=60)
        refusals = [s for s, _ in fed.client.status(job_id).nodes.values()]
        assert "refused" in refusals and "done" not in refusals


def test_expired_and_replayed_submissions_are_refused(federation):
    from jointstats.signing import sign_job

    with pytest.raises(AuthError, match="expired"):
        federation.client.submit(JOB, ttl=-1)
    identity = Identity.load(federation.workdir / "analyst" / "keys")
    plan = federation.client.plan(JOB)
    signed = sign_job(JOB, identity, plan.parties, plan.data_parties)
    federation.client.wait(federation.client.submit_signed(signed), timeout=60)
    with pytest.raises(JobError, match="used before"):
        federation.client.submit_signed(signed)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.binary(max_size=300))
def test_garbage_to_every_coordinator_method_never_breaks_it(federation, payload):
    service = wire_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    for member in ("analyst", "unhcr"):
        with _channel(federation, federation.workdir / member / "keys") as channel:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if method.client_streaming:
                    call = channel.stream_stream(path)(iter([payload, payload]), timeout=5)
                    with contextlib.suppress(grpc.RpcError):
                        list(call)
                else:
                    with contextlib.suppress(grpc.RpcError):
                        channel.unary_unary(path)(payload, timeout=5)
    assert {n.name for n in federation.client.nodes() if n.online} >= {"unhcr", "drc", "nrc"}


def test_a_member_removed_from_the_roster_is_cut_off(data_dir, tmp_path):
    with LocalFederation(_nodes(data_dir), tmp_path / "fed", 30) as fed:
        roster_path = fed.workdir / "roster.toml"
        roster = Roster.load(roster_path)
        del roster.members["nrc"]
        roster.save(roster_path)
        deadline = time.monotonic() + 20
        while any(n.name == "nrc" and n.online for n in fed.client.nodes()):
            assert time.monotonic() < deadline, "the revoked node is still connected"
            time.sleep(0.2)
        time.sleep(2)  # its reconnect attempts are refused in the TLS handshake
        assert not any(n.name == "nrc" and n.online for n in fed.client.nodes())
        with pytest.raises(JobError, match="unknown node 'nrc'"):
            fed.client.submit({**JOB, "inputs": list(AGENCIES)})
        log = fed.workdir / "coordinator" / "audit.jsonl"
        events = [json.loads(x) for x in log.read_text().splitlines()]
        assert any(e["event"] == "MEMBER_REVOKED" and e["principal"] == "nrc" for e in events)


def test_an_analyst_sees_only_their_own_jobs(federation, tmp_path):
    job_id = federation.client.submit(JOB)
    federation.client.wait(job_id, timeout=60)
    roster_path = federation.workdir / "roster.toml"
    roster = Roster.load(roster_path)
    roster.members["bob"] = new_member(tmp_path / "bob", "bob", "analyst")
    roster.save(roster_path)  # applied by the running coordinator within a second
    time.sleep(2.5)
    bob = Client(federation.address, roster_path, tmp_path / "bob")
    try:
        with pytest.raises(JobError, match="no job with id"):
            bob.status(job_id)
        with pytest.raises(JobError, match="no job with id"):
            bob.result(job_id)
    finally:
        bob.close()
        del roster.members["bob"]
        roster.save(roster_path)


def _wait_for_session_start(log: Path, job_id: str, timeout: float = 30) -> str:
    """The job is "running" at the coordinator before each node has logged its start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines(keepends=True) if log.exists() else []
        for line in lines:
            if not line.endswith("\n"):
                break  # the node is still writing this entry
            event = json.loads(line)
            if event["event"] == "SESSION_STARTED" and event["job_id"] == job_id:
                return event["fields"]["session_id"]
        time.sleep(0.05)
    raise AssertionError(f"no SESSION_STARTED for {job_id} in {log} within {timeout} s")


def test_a_node_cannot_take_another_partys_place_in_a_session(data_dir, tmp_path):
    slow = {"JOINTSTATS_SESSION_WORKER": "tests.fakes.slow_worker", "PYTHONPATH": str(REPO)}
    with LocalFederation(
        _nodes(data_dir, dict.fromkeys(AGENCIES, slow)), tmp_path / "fed", 30
    ) as fed:
        job_id = fed.client.submit({**JOB, "inputs": list(AGENCIES)})
        session_id = _wait_for_session_start(fed.workdir / "unhcr" / "audit.jsonl", job_id)
        with _channel(fed, fed.workdir / "unhcr" / "keys") as channel:
            relay = wire_pb2_grpc.CoordinatorStub(channel).Relay
            for claimed in (1, 2):  # drc's and nrc's party ids, claimed by unhcr
                hello = wire_pb2.RelayFrame(session_id=session_id, from_pid=claimed, to_pid=-1)
                with pytest.raises(grpc.RpcError) as refused:
                    next(relay(iter([hello]), timeout=10))
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "is not party" in refused.value.details()
        coordinator_log = fed.workdir / "coordinator" / "audit.jsonl"
        events = [json.loads(x) for x in coordinator_log.read_text().splitlines()]
        assert sum(e["event"] == "AUTH_REFUSED" for e in events) >= 2
        fed.client.wait(job_id, timeout=60)  # the real session is unharmed

"""The analyst's Python client: submit jobs, follow them, fetch results as pandas."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from jointstats.config import ClientConfig
from jointstats.errors import (
    ConfigError,
    JobFailed,
    JointstatsError,
    SessionTimeout,
    from_rpc_error,
)
from jointstats.jobs import canonical_json, load_job_file
from jointstats.keys import Identity, Roster
from jointstats.protocols.base import Plan
from jointstats.results import Result
from jointstats.signing import DEFAULT_TTL_SECONDS, SignedJob, sign_job
from jointstats.transport import channel_credentials, channel_options
from jointstats.v1 import wire_pb2, wire_pb2_grpc

POLL_SECONDS = 0.05  # between status calls, when the coordinator answers at once
LONG_POLL_SECONDS = 5.0  # how long one status call may wait for a change


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    reason: str
    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    updated_at: float = 0.0  # the coordinator's clock at the record's last change

    @property
    def finished(self) -> bool:
        return self.state in ("released", "failed")


class Client:
    """Talks to a coordinator as an analyst (mutual TLS with the analyst's roster certificate)."""

    def __init__(self, coordinator: str, roster: Path, keys: Path, timeout: float = 30.0) -> None:
        identity = Identity.load(keys)
        self._identity = identity
        self._roster = Roster.load(roster)
        self._channel = grpc.secure_channel(
            coordinator,
            channel_credentials(identity, self._roster),
            options=channel_options(),
        )
        self._stub = wire_pb2_grpc.CoordinatorStub(self._channel)
        self._timeout = timeout

    @classmethod
    def from_config(cls, path: Path) -> Client:
        config = ClientConfig.load(path)
        return cls(config.coordinator, config.roster, config.keys)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def plan(self, job: dict[str, Any] | Path | str) -> Plan:
        """The parties the coordinator would run the job with (to be signed with it)."""
        doc = job if isinstance(job, dict) else load_job_file(Path(job))
        reply = self._call("Plan", wire_pb2.PlanRequest(job_json=canonical_json(doc)))
        return Plan(tuple(reply.parties), tuple(reply.data_parties))

    def submit(
        self,
        job: dict[str, Any] | Path | str,
        ttl: float = DEFAULT_TTL_SECONDS,
        on_plan: Callable[[Plan], None] | None = None,
    ) -> str:
        """Ask for the plan, sign the job and its parties with the analyst's key, and submit
        it; returns the job id. Nodes refuse a session whose parties differ from the signed
        ones, so the coordinator cannot bring in parties of its own choosing."""
        doc = job if isinstance(job, dict) else load_job_file(Path(job))
        plan = self.plan(doc)
        if on_plan is not None:
            on_plan(plan)
        signed = sign_job(doc, self._identity, plan.parties, plan.data_parties, ttl)
        return self.submit_signed(signed)

    def submit_signed(self, signed: SignedJob) -> str:
        request = wire_pb2.SubmitRequest(envelope=signed.envelope, signature=signed.signature)
        return self._call("Submit", request).job_id

    def status(
        self,
        job_id: str,
        wait: float = 0.0,
        updated_after: float = 0.0,
        until_finished: bool = False,
    ) -> JobStatus:
        """The job's status; with `wait`, once it changed after `updated_after` (or finished,
        with `until_finished`), or after `wait` seconds at most (a long poll)."""
        request = wire_pb2.StatusRequest(
            job_id=job_id,
            wait_seconds=wait,
            updated_after=updated_after,
            until_finished=until_finished,
        )
        reply = self._stub.GetStatus  # the call may wait `wait` seconds on top of the timeout
        try:
            answer = reply(request, timeout=self._timeout + wait)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        nodes = {n.node: (n.state, n.reason) for n in answer.nodes}
        return JobStatus(answer.job_id, answer.state, answer.reason, nodes, answer.updated_at)

    def result(self, job_id: str) -> Result:
        """The released table, verified: every party's signature over the table and the
        session it agreed on, against the roster (ResultError when anything differs)."""
        reply = self._call("GetResult", wire_pb2.ResultRequest(job_id=job_id))
        return Result.from_json(reply.result_json, self._roster, job_id)

    def wait(
        self,
        job_id: str,
        timeout: float = 600.0,
        on_status: Callable[[JobStatus], None] | None = None,
    ) -> Result:
        """Block until the job is released (return its result) or failed (raise JobFailed)."""
        deadline = time.monotonic() + timeout
        seen = 0.0
        while True:
            wait = max(0.0, min(LONG_POLL_SECONDS, deadline - time.monotonic()))
            status = self.status(job_id, wait, seen, until_finished=on_status is None)
            if on_status is not None:
                on_status(status)
            if status.state == "released":
                return self.result(job_id)
            if status.state == "failed":
                raise JobFailed(f"job {job_id} failed: {status.reason}")
            if time.monotonic() > deadline:
                raise SessionTimeout(f"job {job_id} still {status.state} after {timeout:.0f} s")
            if status.updated_at == seen:  # nothing new: a coordinator that does not long-poll
                time.sleep(POLL_SECONDS)
            seen = status.updated_at

    def run(self, job: dict[str, Any] | Path | str, timeout: float = 600.0) -> Result:
        return self.wait(self.submit(job), timeout)

    def nodes(self) -> list[wire_pb2.NodeInfo]:
        return list(self._call("ListNodes", wire_pb2.ListNodesRequest()).nodes)

    def wait_for_nodes(self, names: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                members = self.nodes()
            except JointstatsError:
                members = []
            unknown = sorted(set(names) - {n.name for n in members})
            if members and unknown:
                nodes = ", ".join(sorted(n.name for n in members))
                missing = ", ".join(unknown)
                raise ConfigError(f"not a node in the roster: {missing} (nodes: {nodes})")
            online = {n.name for n in members if n.online}
            if set(names) <= online:
                return
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(names) - online))
                raise SessionTimeout(f"node(s) {missing} did not connect within {timeout:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

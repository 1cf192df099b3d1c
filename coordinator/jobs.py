"""The coordinator's job state machine.

submitted -> (every party accepts) -> running -> (every party reports the same table) -> released
          -> (a party refuses, fails, disconnects, or time runs out)             -> failed

A party may hold the offer for its operator's approval: it reports "waiting", and the job's
deadline moves to the analyst's signed expiry (plus a grace for the node's own refusal).
While the job is in the offer phase, a party that disconnects does not fail it: its decision
is forgotten and the offer is sent again when it reconnects (its approval queue survives).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from jointstats.audit import AuditLog
from jointstats.errors import AuthError, JobError, JointstatsError
from jointstats.jobs import parse_job_bytes
from jointstats.keys import Roster
from jointstats.protocols import FederationView, Plan, parse_job
from jointstats.protocols.release import Disclosure
from jointstats.results import verify_result
from jointstats.session import signed_part
from jointstats.signing import SignedJob, verify_job
from jointstats.v1 import wire_pb2

from .relay import Relay
from .store import JobRecord, JobStore

log = logging.getLogger(__name__)
APPROVAL_GRACE_SECONDS = 5.0  # past the signed expiry: the waiting node refuses first


@dataclass
class NodeConn:
    """A node's open Connect stream."""

    name: str
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    datasets: set[str] = field(default_factory=set)


@dataclass
class ActiveJob:
    record: JobRecord
    plan: Plan
    disclosure: Disclosure
    floors: dict[str, tuple[int, int]] = field(default_factory=dict)  # min_cell, protection
    results: dict[str, bytes] = field(default_factory=dict)
    signatures: dict[str, bytes] = field(default_factory=dict)
    session_id: str = ""
    deadline: asyncio.TimerHandle | None = None
    expires: float = 0.0  # the analyst's signed expiry


class JobManager:
    def __init__(
        self, store: JobStore, roster: Roster, relay: Relay, job_timeout: float, audit: AuditLog
    ) -> None:
        self.store, self.roster, self.relay, self.audit = store, roster, relay, audit
        self.job_timeout = job_timeout
        self.nodes: dict[str, NodeConn] = {}
        self.active: dict[str, ActiveJob] = {}

    def view(self) -> FederationView:
        return FederationView(
            roles={m.name: m.role for m in self.roster.members.values()},
            online=set(self.nodes),
            datasets={n: set(c.datasets) for n, c in self.nodes.items()},
        )

    def _send(self, node: str, message: wire_pb2.CoordinatorMessage) -> None:
        conn = self.nodes.get(node)
        if conn is not None:
            conn.outbox.put_nowait(message)

    def plan(self, job_json: bytes) -> Plan:
        """The parties this coordinator would run a job with; the analyst signs them."""
        protocol, job = parse_job(parse_job_bytes(job_json))
        return protocol.plan(job, self.view())

    def _check_signed_plan(self, plan: Plan) -> None:
        view = self.view()
        for party in plan.parties:
            if view.roles.get(party) not in ("node", "compute"):
                raise JobError(f"signed party {party!r} is not a node in the roster")
            if party not in view.online:
                raise JobError(
                    f"node {party!r} is not connected; ask for a new plan and sign again"
                )

    def submit(self, signed: SignedJob, caller: str) -> str:
        envelope = verify_job(signed, self.roster)
        if envelope.analyst != caller:
            raise AuthError(f"{caller} submitted a job signed by {envelope.analyst}")
        if self.store.get(envelope.job_id) is not None:
            raise JobError(f"job id {envelope.job_id} was used before; sign the job again")
        protocol, job = parse_job(envelope.job)
        plan = Plan(envelope.parties, envelope.data_parties)
        self._check_signed_plan(plan)
        record = JobRecord(envelope.job_id, signed.envelope, signed.signature, caller)
        record.nodes = {p: {"state": "offered", "reason": ""} for p in plan.parties}
        self.store.save(record)
        active = ActiveJob(record, plan, protocol.disclosure(job), expires=envelope.expires)
        self.active[record.job_id] = active
        self._arm(active, self.job_timeout)
        for party in plan.parties:
            self._offer(active, party)
        log.info("JOB_SUBMITTED job=%s analyst=%s parties=%s", record.job_id, caller, plan.parties)
        self.audit.append(
            "JOB_SUBMITTED",
            record.job_id,
            caller,
            envelope_sha256=signed.digest,
            parties=list(plan.parties),
        )
        return record.job_id

    def _offer(self, active: ActiveJob, party: str) -> None:
        offer = wire_pb2.JobOffer(
            job_id=active.record.job_id,
            envelope=active.record.envelope,
            signature=active.record.signature,
            parties=list(active.plan.parties),
            data_parties=list(active.plan.data_parties),
        )
        self._send(party, wire_pb2.CoordinatorMessage(offer=offer))

    def _arm(self, active: ActiveJob, seconds: float) -> None:
        if active.deadline is not None:
            active.deadline.cancel()
        active.deadline = asyncio.get_running_loop().call_later(
            max(0.0, seconds), self._expire, active.record.job_id
        )

    def _waiting(self, active: ActiveJob) -> list[str]:
        return [n for n, s in active.record.nodes.items() if s["state"] == "waiting"]

    def _expire(self, job_id: str) -> None:
        active = self.active.get(job_id)
        if active is None:
            return
        waiting = self._waiting(active)
        if waiting:
            self.fail(
                job_id, f"not approved at {', '.join(waiting)} before the job's signed expiry"
            )
            return
        waiting = [n for n, s in active.record.nodes.items() if s["state"] not in ("done",)]
        self.fail(
            job_id, f"timed out after {self.job_timeout:.0f} s waiting for {', '.join(waiting)}"
        )

    def _set_node(self, active: ActiveJob, node: str, state: str, reason: str = "") -> None:
        active.record.nodes[node] = {"state": state, "reason": reason}
        self.store.save(active.record)

    def on_decision(self, node: str, decision: wire_pb2.JobDecision) -> None:
        active = self.active.get(decision.job_id)
        if active is None or node not in active.record.nodes or active.record.state != "submitted":
            return  # late or repeated decisions cannot restart a session
        if not decision.accept:
            self._set_node(active, node, "refused", decision.reason)
            self.fail(decision.job_id, f"node {node} refused: {decision.reason}", culprit=node)
            return
        active.floors[node] = (decision.min_cell_floor, decision.protection_floor)
        was_waiting = active.record.nodes[node]["state"] == "waiting"
        self._set_node(active, node, "accepted")
        if was_waiting and not self._waiting(active):  # approved: the normal clock again
            self._arm(active, self.job_timeout)
        if len(active.floors) == len(active.plan.parties):
            self._start_session(active)

    def _start_session(self, active: ActiveJob) -> None:
        active.session_id = uuid.uuid4().hex
        min_cell = max([active.disclosure.min_cell, *(f[0] for f in active.floors.values())])
        protection = max([active.disclosure.protection, *(f[1] for f in active.floors.values())])
        self.relay.open(active.session_id, active.record.job_id, active.plan.parties)
        start = wire_pb2.SessionStart(
            job_id=active.record.job_id,
            session_id=active.session_id,
            parties=list(active.plan.parties),
            min_cell=min_cell,
            data_parties=list(active.plan.data_parties),
            protection=max(protection, min_cell),
        )
        active.record.state = "running"
        self.store.save(active.record)
        for party in active.plan.parties:
            self._send(party, wire_pb2.CoordinatorMessage(start=start))
        log.info("SESSION_STARTED job=%s session=%s", active.record.job_id, active.session_id)

    def on_report(self, node: str, report: wire_pb2.SessionReport) -> None:
        active = self.active.get(report.job_id)
        if active is None or node not in active.record.nodes:
            return
        if report.state == "failed":
            self._set_node(active, node, "failed", report.reason)
            self.fail(report.job_id, f"node {node}: {report.reason}", culprit=node)
        elif report.state == "waiting" and active.record.state == "submitted":
            self._set_node(active, node, "waiting", report.reason)  # for its operator
            active.floors.pop(node, None)
            self._arm(active, active.expires - time.time() + APPROVAL_GRACE_SECONDS)
        elif report.state == "running":
            self._set_node(active, node, "running", report.reason)  # reason = current phase
        elif report.state == "done":
            active.results[node] = report.result_json
            active.signatures[node] = report.signature
            self._set_node(active, node, "done")
            if len(active.results) == len(active.plan.parties):
                self._release(active)

    def _release(self, active: ActiveJob) -> None:
        try:
            tables = {n: json.loads(r) for n, r in active.results.items()}
            first = tables[active.plan.parties[0]]
            same = all(
                signed_part(t) == signed_part(first) and t.get("session") == first.get("session")
                for t in tables.values()
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            same = False
        if not same:
            self.fail(active.record.job_id, "parties reported different tables; result withheld")
            return
        first["metadata"]["timings_by_node"] = {
            n: t["metadata"].get("timings", {}) for n, t in tables.items()
        }
        first["signatures"] = {
            n: base64.b64encode(active.signatures.get(n, b"")).decode() for n in tables
        }
        first["envelope"] = base64.b64encode(active.record.envelope).decode()
        first["envelope_signature"] = base64.b64encode(active.record.signature).decode()
        try:
            verify_result(first, self.roster, active.record.job_id)
        except JointstatsError as exc:
            self.fail(active.record.job_id, f"result withheld: {exc}")
            return
        active.record.result_json = json.dumps(first).encode()
        active.record.state = "released"
        self._finish(active)
        log.info("RESULT_RELEASED job=%s", active.record.job_id)
        self.audit.append(
            "RESULT_RELEASED",
            active.record.job_id,
            active.record.submitted_by,
            result_sha256=hashlib.sha256(active.record.result_json).hexdigest(),
        )

    def fail(self, job_id: str, reason: str, culprit: str | None = None) -> None:
        active = self.active.get(job_id)
        if active is None:
            return
        active.record.state, active.record.reason = "failed", reason
        for state in active.record.nodes.values():
            if state["state"] in ("offered", "accepted", "running"):
                was = f"{state['state']} {state.get('reason') or ''}".strip()
                state["state"], state["reason"] = "aborted", f"(was {was})"
        abort = wire_pb2.SessionAbort(job_id=job_id, reason=reason)
        for party in active.plan.parties:
            if party != culprit:
                self._send(party, wire_pb2.CoordinatorMessage(abort=abort))
        self._finish(active)
        log.warning("JOB_FAILED job=%s reason=%s", job_id, reason)
        self.audit.append("JOB_FAILED", job_id, active.record.submitted_by, reason=reason)

    def _finish(self, active: ActiveJob) -> None:
        if active.deadline is not None:
            active.deadline.cancel()
        if active.session_id:
            self.relay.close(active.session_id)
        self.store.save(active.record)
        self.active.pop(active.record.job_id, None)

    def on_disconnect(self, node: str, conn: NodeConn) -> None:
        """The node's current stream ended: fail its running jobs; keep those still in the
        offer phase (to offer again on reconnect). An older, replaced stream is ignored."""
        if self.nodes.get(node) is not conn:
            return
        del self.nodes[node]
        for job_id, active in list(self.active.items()):
            if node not in active.plan.parties:
                continue
            if active.record.state == "submitted":
                active.floors.pop(node, None)
                state = active.record.nodes[node]["state"]
                kept = "waiting" if state == "waiting" else "offered"
                self._set_node(active, node, kept, "disconnected; offered again on reconnect")
            else:
                self.fail(job_id, f"node {node} disconnected during the job", culprit=node)

    def on_connect(self, node: str) -> None:
        """A node (re)connected: offer it again the jobs still waiting for its decision."""
        for active in list(self.active.values()):
            if (
                active.record.state == "submitted"
                and node in active.plan.parties
                and node not in active.floors
                and active.record.nodes[node]["reason"].startswith("disconnected")
            ):
                self._offer(active, node)

    def status(self, job_id: str, caller: str) -> JobRecord:
        """A job's record, for the analyst who submitted it only."""
        record = self.store.get(job_id)
        if record is None or record.submitted_by != caller:
            raise JobError(f"no job with id {job_id} of yours")
        return record

"""Manual approval (`approval = "manual"` in a node's [policy]): an offer that passes policy
waits in the node's state database until its operator decides with `jointstats node approve`
or `deny` (another process, writing to the same database), or until the job's signed expiry.

The node polls the queue (POLL_SECONDS), writes each decision to its audit log (JOB_APPROVED,
JOB_DENIED, JOB_EXPIRED) and tells the coordinator: an approval re-checks the job against the
policy as it is then and accepts it; a denial refuses it with the operator's reason, which
reaches the analyst; an expiry refuses it. Charged epsilon is refunded unless approved.

The queue survives a restart of the node: when the coordinator offers a queued job again
(it re-sends offers still in the offer phase to a node that reconnects), the node answers from
the queue (waiting, accepted, or refused with the reason it gave) instead of treating the
offer as a replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from jointstats.errors import JointstatsError
from jointstats.protocols.base import Plan
from jointstats.signing import SignedJob
from jointstats.v1 import wire_pb2

from .egress import row_count, statement
from .policy import Decision, Offer, recheck
from .state import Approval

if TYPE_CHECKING:
    from .server import Node

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
EXPIRED = "not approved before the job's signed expiry"


def _offer(offer: wire_pb2.JobOffer) -> Offer:
    return Offer(
        SignedJob(offer.envelope, offer.signature), list(offer.parties), list(offer.data_parties)
    )


class ApprovalDesk:
    """The node's side of the approval queue."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.tasks: set[asyncio.Task[None]] = set()

    def hold(self, decision: Decision, offer: wire_pb2.JobOffer) -> None:
        """Queue an accepted offer; its statement needs a count query, run off the loop."""
        task = asyncio.create_task(self._hold(decision, offer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _hold(self, decision: Decision, offer: wire_pb2.JobOffer) -> None:
        node, envelope = self.node, decision.envelope
        assert envelope is not None
        rows = await asyncio.to_thread(row_count, node.config, decision)
        plan = Plan(tuple(offer.parties), tuple(offer.data_parties))
        doc = statement(node.config, node.state, decision, plan, rows)
        purpose = str(envelope.job.get("purpose", ""))
        node.state.hold(
            Approval(
                offer.job_id, time.time(), envelope.expires, envelope.analyst, purpose,
                offer.envelope, offer.signature, list(offer.parties), list(offer.data_parties),
                decision.epsilon, doc, "pending",
            )
        )  # fmt: skip
        node.audit.append(
            "JOB_QUEUED",
            offer.job_id,
            envelope.analyst,
            purpose=purpose,
            expires=envelope.expires,
            egress=doc,
        )
        log.info("JOB_QUEUED job=%s analyst=%s", offer.job_id, envelope.analyst)
        self._tell_waiting(offer.job_id)

    def _tell_waiting(self, job_id: str) -> None:
        self.node._report(job_id, "waiting", f"waiting for approval at {self.node.config.name}")

    def _answer(self, job_id: str, accept: bool, reason: str = "") -> None:
        policy = self.node.config.policy
        self.node._send(
            decision=wire_pb2.JobDecision(
                job_id=job_id,
                accept=accept,
                reason=reason,
                min_cell_floor=policy.min_cell,
                protection_floor=policy.protection,
            )
        )

    def reoffered(self, offer: wire_pb2.JobOffer) -> bool:
        """A queued job offered again (the node or its connection restarted): answer from the
        queue. False when the job is not in the queue (or the offer differs from the one
        queued): the caller decides it as a new offer."""
        approval = self.node.state.approval(offer.job_id)
        if approval is None or approval.envelope != offer.envelope:
            return False
        if approval.status == "pending":
            self._tell_waiting(offer.job_id)
        elif approval.handled and approval.status == "approved":
            self._accept(approval, offer)
        elif approval.handled:
            self._answer(offer.job_id, False, self._reason(approval))
        return True  # (an unhandled decision is answered by the next poll)

    def withdraw(self, job_id: str, reason: str) -> bool:
        """The coordinator gave the job up (another party refused, time ran out)."""
        if not self.node.state.decide(job_id, "withdrawn", reason, "coordinator"):
            return False
        self.node.state.mark_handled(job_id)
        self.node.audit.append("SESSION_ABORTED", job_id, reason=reason)
        self.node._refund(job_id, "withdrawn while waiting for approval")
        return True

    async def watch(self) -> None:
        while True:
            try:
                self.poll()
            except JointstatsError as exc:  # e.g. the audit log failed: keep the node up
                log.error("approval queue: %s", exc)
            await asyncio.sleep(POLL_SECONDS)

    def poll(self, now: float | None = None) -> None:
        state = self.node.state
        now = time.time() if now is None else now
        for approval in state.approvals("status = 'pending' AND expires < ?", now):
            state.decide(approval.job_id, "expired", EXPIRED, "node")
        for approval in state.approvals("handled = 0 AND status != 'pending'"):
            self._settle(approval)

    def _reason(self, approval: Approval) -> str:
        if approval.status == "denied":
            return f"denied by its operator: {approval.reason}"
        return approval.reason

    def _settle(self, approval: Approval) -> None:
        node, job_id = self.node, approval.job_id
        if approval.status == "approved":
            node.audit.append("JOB_APPROVED", job_id, approval.decided_by, analyst=approval.analyst)
            log.info("JOB_APPROVED job=%s by=%s", job_id, approval.decided_by)
            offer = wire_pb2.JobOffer(
                job_id=job_id,
                envelope=approval.envelope,
                signature=approval.signature,
                parties=approval.parties,
                data_parties=approval.data_parties,
            )
            self._accept(approval, offer)
        else:
            event = {"denied": "JOB_DENIED", "expired": "JOB_EXPIRED"}.get(approval.status)
            if event is not None:
                node.audit.append(event, job_id, approval.decided_by, reason=approval.reason)
                log.info("%s job=%s reason=%s", event, job_id, approval.reason)
                node._refund(job_id, f"{approval.status} while waiting for approval")
                self._answer(job_id, False, self._reason(approval))
        node.state.mark_handled(job_id)

    def _accept(self, approval: Approval, offer: wire_pb2.JobOffer) -> None:
        """Accept an approved job, re-checked against the policy of now (at the approval's
        time for the expiry: a job approved in time stays approved)."""
        node = self.node
        try:
            decision = recheck(
                node.config, node.roster, _offer(offer), approval.epsilon, approval.decided_at
            )
        except JointstatsError as exc:
            node.audit.append("JOB_REFUSED", approval.job_id, reason=str(exc))
            node._refund(approval.job_id, "refused on approval: nothing was computed")
            self._answer(approval.job_id, False, str(exc))
            return
        node.offers[approval.job_id] = (decision, offer)
        self._answer(approval.job_id, True)

"""A node: dials out to the coordinator, decides on job offers, runs MPC sessions in workers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import signal
from typing import Any

import grpc

from jointstats.audit import AuditLog
from jointstats.config import NodeConfig
from jointstats.errors import ConfigError, JointstatsError
from jointstats.keys import Identity, RosterFile
from jointstats.protocols.base import Plan
from jointstats.session import (
    SessionDescription,
    SessionSpec,
    library_stack,
    result_message,
    table_digest,
)
from jointstats.signing import SignedJob
from jointstats.transport import REGISTERED_HEADER, channel_credentials, channel_options
from jointstats.v1 import wire_pb2, wire_pb2_grpc

from .approval import ApprovalDesk
from .egress import statement
from .policy import (
    Decision,
    Offer,
    SessionStartView,
    check_release,
    check_session_start,
    decide,
    needs_approval,
)
from .state import NodeState
from .workers import PRELOAD_ENV, WorkerPool

log = logging.getLogger(__name__)
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


def _uses_spark_connect(datasets: dict[str, dict[str, Any]]) -> bool:
    """Whether a dataset may be served by a Spark Connect server (sc://, or a master URL
    from the environment)."""
    return any(
        spec.get("engine") == "spark"
        and ("master_env" in spec or str(spec.get("master", "")).startswith("sc://"))
        for spec in datasets.values()
    )


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.identity = Identity.load(config.keys)
        self.roster_file = RosterFile(config.roster)
        self.roster = self.roster_file.roster  # updated in place by refresh()
        config.state_dir.mkdir(parents=True, exist_ok=True)
        preconnect = {
            "JOINTSTATS_PRECONNECT": config.coordinator,
            "JOINTSTATS_PRECONNECT_KEYS": str(config.keys),
            "JOINTSTATS_PRECONNECT_ROSTER": str(config.roster),
        }
        if _uses_spark_connect(config.datasets):  # its fork server loads the client once
            preconnect[PRELOAD_ENV] = "spark-connect"
        self.pool = WorkerPool(config.state_dir / "sessions.log", preconnect)
        self.state = NodeState(config.state_dir / "node.sqlite")
        self.audit = AuditLog(config.state_dir / "audit.jsonl", self.identity, config.name)
        self.outbox: asyncio.Queue[wire_pb2.NodeMessage] = asyncio.Queue()
        self.sessions: dict[str, asyncio.Task[None]] = {}
        self.offers: dict[str, tuple[Decision, wire_pb2.JobOffer]] = {}
        self.abort_reasons: dict[str, str] = {}
        self.slots = asyncio.Semaphore(config.max_sessions)
        self.desk = ApprovalDesk(self)  # jobs held for the operator (policy approval)

    def _send(self, **kind: Any) -> None:
        self.outbox.put_nowait(wire_pb2.NodeMessage(**kind))

    async def _messages(self):
        yield wire_pb2.NodeMessage(hello=wire_pb2.Hello(datasets=sorted(self.config.datasets)))
        while True:
            yield await self.outbox.get()

    async def run(self, stop: asyncio.Event) -> None:
        self.pool.warm()
        watcher = asyncio.create_task(self.desk.watch())
        attempt = 0
        while not stop.is_set():
            try:
                await self._connect_once(stop)
                attempt = 0
            except grpc.aio.AioRpcError as exc:
                log.warning("coordinator stream ended: %s", exc.details() or exc.code().name)
                # refused: our key is revoked, or another process runs with our keys
                if exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.ALREADY_EXISTS,
                ):
                    await self._shutdown()
                    raise JointstatsError(
                        f"coordinator refused this node: {exc.details()}"
                    ) from None
            delay = BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)]
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        watcher.cancel()
        await self._shutdown()

    async def _connect_once(self, stop: asyncio.Event) -> None:
        self.outbox = asyncio.Queue()
        async with grpc.aio.secure_channel(
            self.config.coordinator,
            channel_credentials(self.identity, self.roster),
            options=channel_options(),
        ) as channel:
            call = wire_pb2_grpc.CoordinatorStub(channel).Connect(self._messages())
            stopper = asyncio.create_task(stop.wait())
            reader = asyncio.create_task(self._read(call))
            announcer = asyncio.create_task(self._announce_when_registered(call))
            await asyncio.wait({stopper, reader}, return_when="FIRST_COMPLETED")
            if stopper.done():
                await self._abort_sessions("the node is shutting down")
                await self._drain_outbox()
            stopper.cancel()
            announcer.cancel()
            if not reader.done():
                call.cancel()
                reader.cancel()
            elif reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]

    async def _announce_when_registered(self, call: Any) -> None:
        """Log "connected" once the coordinator has accepted the stream, not when dialling."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            metadata = await call.initial_metadata()
            if metadata is not None and REGISTERED_HEADER in dict(metadata):
                log.info("connected to coordinator %s", self.config.coordinator)

    async def _read(self, call: Any) -> None:
        async for message in call:
            kind = message.WhichOneof("kind")
            if kind == "offer":
                self._on_offer(message.offer)
            elif kind == "start":
                self._on_start(message.start)
            elif kind == "abort":
                self._on_abort(message.abort)

    def _on_offer(self, offer: wire_pb2.JobOffer) -> None:
        if self.roster_file.refresh():
            log.info("ROSTER_RELOADED members=%s", sorted(self.roster.members))
        signed = SignedJob(offer.envelope, offer.signature)
        if self._offered_before(offer):
            return
        self.audit.append(
            "JOB_RECEIVED",
            offer.job_id,
            **{
                "envelope": offer.envelope.decode(errors="replace"),
                "signature": base64.b64encode(offer.signature).decode(),
                "envelope_sha256": signed.digest,
                "parties": list(offer.parties),
            },
        )
        decision = decide(
            self.config,
            self.roster,
            self.state,
            Offer(signed, list(offer.parties), list(offer.data_parties)),
        )
        if decision.accept and decision.envelope is not None:
            if decision.envelope.job_id != offer.job_id:
                self._refund(decision.envelope.job_id, "refused after charging: job id mismatch")
                decision = Decision(False, "the offer's job id differs from the signed one")
            else:
                self.offers[offer.job_id] = (decision, offer)
        log.info(
            "JOB_DECIDED job=%s accept=%s reason=%s", offer.job_id, decision.accept, decision.reason
        )
        principal = decision.envelope.analyst if decision.envelope else ""
        if decision.accept:
            held = needs_approval(self.config.policy, decision)
            plan = Plan(tuple(offer.parties), tuple(offer.data_parties))
            self.audit.append(
                "JOB_ACCEPTED",
                offer.job_id,
                principal,
                **{
                    "analyst_fingerprint": decision.analyst_fingerprint,
                    "columns": decision.columns or {},
                    "epsilon_charged": decision.epsilon,
                    "approval": "manual" if held else "auto",
                    # a held job's statement (with this node's row count) goes in JOB_QUEUED
                    **(
                        {}
                        if held
                        else {"egress": statement(self.config, self.state, decision, plan, None)}
                    ),
                },
            )
            if held:
                self.offers.pop(offer.job_id, None)
                self.desk.hold(decision, offer)
                return
        else:
            self.audit.append("JOB_REFUSED", offer.job_id, **{"reason": decision.reason})
        self._send(
            decision=wire_pb2.JobDecision(
                job_id=offer.job_id,
                accept=decision.accept,
                reason=decision.reason,
                min_cell_floor=self.config.policy.min_cell,
                protection_floor=self.config.policy.protection,
            )
        )

    def _offered_before(self, offer: wire_pb2.JobOffer) -> bool:
        """The coordinator offers a job again after this node reconnected: answer as before
        (accepted and not started, or in the approval queue) instead of as a replay."""
        accepted = self.offers.get(offer.job_id)
        if accepted is not None and accepted[1].envelope == offer.envelope:
            self.desk._answer(offer.job_id, True)
            return True
        return self.desk.reoffered(offer)

    def _on_start(self, start: wire_pb2.SessionStart) -> None:
        accepted = self.offers.pop(start.job_id, None)
        if accepted is None:
            self._fail_session(start.job_id, "session start for a job this node did not accept")
            return
        decision, offer = accepted
        view = SessionStartView(
            list(start.parties), list(start.data_parties), start.min_cell, start.protection
        )
        try:
            check_session_start(
                self.config,
                decision,
                Offer(
                    SignedJob(offer.envelope, offer.signature),
                    list(offer.parties),
                    list(offer.data_parties),
                ),
                view,
            )
        except JointstatsError as exc:
            self._refund(start.job_id, "session start refused: nothing was computed")
            self._fail_session(start.job_id, str(exc))
            return
        description = self._description(decision, start, hashlib.sha256(offer.envelope).hexdigest())
        self.state.mark_started(start.job_id)
        self.audit.append(
            "SESSION_STARTED",
            start.job_id,
            decision.envelope.analyst if decision.envelope else "",
            **{
                "session_id": start.session_id,
                "session_sha256": description.digest.hex(),
                "parties": list(start.parties),
                "data_parties": list(start.data_parties),
                "disclosure": description.disclosure,
            },
        )
        self.sessions[start.job_id] = asyncio.create_task(self._run_session(decision, description))

    def _on_abort(self, abort: wire_pb2.SessionAbort) -> None:
        self.desk.withdraw(abort.job_id, abort.reason)  # (when it waits for approval)
        if self.offers.pop(abort.job_id, None) is not None:  # accepted, not started: log it too
            self.audit.append("SESSION_ABORTED", abort.job_id, reason=abort.reason)
            self._refund(abort.job_id, "aborted before its session started")
        task = self.sessions.pop(abort.job_id, None)
        if task is not None:
            self.abort_reasons[abort.job_id] = f"coordinator aborted the job: {abort.reason}"
            task.cancel()
            log.info("SESSION_ABORTED job=%s reason=%s", abort.job_id, abort.reason)

    def _refund(self, job_id: str, reason: str) -> None:
        """Give back the epsilon charged for a job whose session never started (audited)."""
        refunded = self.state.refund(job_id)
        if refunded:
            self.audit.append("EPSILON_REFUNDED", job_id, epsilon_refunded=refunded, reason=reason)
            log.info("EPSILON_REFUNDED job=%s epsilon=%s reason=%s", job_id, refunded, reason)

    def _report(self, job_id: str, state: str, reason: str = "", result: bytes = b"") -> None:
        self._send(
            report=wire_pb2.SessionReport(
                job_id=job_id, state=state, reason=reason, result_json=result
            )
        )

    def _description(
        self, decision: Decision, start: wire_pb2.SessionStart, envelope_sha256: str
    ) -> SessionDescription:
        """This node's view of the session; every party must derive the same one."""
        assert decision.envelope is not None and decision.protocol is not None
        disclosure = decision.protocol.disclosure(decision.job)
        return SessionDescription(
            job_id=start.job_id,
            session_id=start.session_id,
            envelope_sha256=envelope_sha256,
            protocol=decision.protocol.kind,
            protocol_version=decision.protocol.version,
            parties=tuple(start.parties),
            data_parties=tuple(start.data_parties),
            disclosure=disclosure.effective(start.min_cell, start.protection),
            stack=library_stack(),
        )

    def _session_spec(self, decision: Decision, description: SessionDescription) -> SessionSpec:
        assert decision.envelope is not None
        return SessionSpec(
            description=description,
            job_json=decision.envelope.job_bytes.decode(),
            node=self.config.name,
            coordinator=self.config.coordinator,
            key_dir=str(self.config.keys),
            roster=str(self.config.roster),
            datasets=self.config.datasets,
            timeout=self.config.session_timeout,
            max_rows=self.config.policy.max_rows,
        )

    async def _run_session(self, decision: Decision, description: SessionDescription) -> None:
        job_id = description.job_id
        try:
            async with self.slots:
                worker = await self.pool.take()
                self._report(job_id, "running")
                try:
                    answer = await worker.run(
                        self._session_spec(decision, description).to_dict(),
                        self.config.session_timeout + 30,
                        on_progress=lambda phase: self._report(job_id, "running", phase),
                    )
                finally:
                    await worker.kill()
            if answer.get("ok"):
                self._release(decision, description, answer)
            elif answer.get("type") == "SessionMismatch":
                self.audit.append("SESSION_MISMATCH", job_id, reason=answer.get("error", ""))
                self._fail_session(job_id, answer.get("error", "session description mismatch"))
            else:
                self._fail_session(job_id, answer.get("error", "session failed"))
        except JointstatsError as exc:
            self._fail_session(job_id, str(exc))
        except asyncio.CancelledError:
            reason = self.abort_reasons.pop(job_id, "aborted")
            self._report(job_id, "failed", f"node {self.config.name}: {reason}")
            self.audit.append("SESSION_ABORTED", job_id, reason=reason)
            raise
        finally:
            self.sessions.pop(job_id, None)
            self.pool.warm()

    def _release(
        self, decision: Decision, description: SessionDescription, answer: dict[str, Any]
    ) -> None:
        """Check the table against this node's own threshold, sign it with the session
        description, report it and log it."""
        result = answer["result"]
        check_release(self.config, result, description.disclosure)
        signature = self.identity.sign_private.sign(result_message(description.digest, result))
        self._send(
            report=wire_pb2.SessionReport(
                job_id=description.job_id,
                state="done",
                result_json=json.dumps(result).encode(),
                signature=signature,
            )
        )
        self.audit.append(
            "RESULT_RELEASED",
            description.job_id,
            **{
                "table_sha256": table_digest(result),
                "session_sha256": description.digest.hex(),
                "signature": base64.b64encode(signature).decode(),
                "epsilon_charged": decision.epsilon,
                **answer.get("facts", {}),
            },
        )
        log.info("SESSION_DONE job=%s", description.job_id)

    async def _abort_sessions(self, reason: str) -> None:
        for job_id, task in list(self.sessions.items()):
            self.abort_reasons[job_id] = reason
            task.cancel()
        await asyncio.gather(*self.sessions.values(), return_exceptions=True)

    async def _drain_outbox(self, seconds: float = 2.0) -> None:
        """Give the stream a moment to deliver the last reports before it closes."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.outbox.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)

    def _fail_session(self, job_id: str, reason: str) -> None:
        self._report(job_id, "failed", reason)
        self.audit.append("SESSION_FAILED", job_id, **{"reason": reason})
        log.warning("SESSION_FAILED job=%s reason=%s", job_id, reason)

    async def _shutdown(self) -> None:
        await self._abort_sessions("the node is shutting down")
        await self.pool.close()
        self.state.close()
        log.info("NODE_STOPPED node=%s", self.config.name)


async def serve(config: NodeConfig) -> None:
    keys_name = Identity.load(config.keys).name
    if keys_name != config.name:
        raise ConfigError(
            f"this node's config names it {config.name!r} but its keys ({config.keys}) are "
            f"{keys_name!r}'s: give the config name = {keys_name!r} or the keys of {config.name!r}"
        )
    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)

"""The coordinator's gRPC service: job intake, node streams and the MPC relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from jointstats.audit import AuditLog
from jointstats.config import CoordinatorConfig
from jointstats.errors import JobError, JointstatsError
from jointstats.keys import Identity, RosterFile
from jointstats.signing import SignedJob
from jointstats.transport import REGISTERED_HEADER, SERVER_OPTIONS, server_credentials
from jointstats.v1 import wire_pb2, wire_pb2_grpc

from .auth import RosterAuth, current_caller
from .jobs import JobManager, NodeConn
from .relay import CLOSE, Relay
from .store import JobStore

log = logging.getLogger(__name__)
ROSTER_POLL_SECONDS = 1.0
MAX_STATUS_WAIT_SECONDS = 10.0  # one long poll of GetStatus, at most
RELAY_HELLO_SECONDS = 30.0
CONNECT_HELLO_SECONDS = 30.0
# A member's new node stream waits this long for its old one to end before it is refused as a
# second, live connection. A connection that died without a word (a network cut, a crashed
# host) is found by keepalive pings at both ends, at most about one ping period apart
# (measured with a black-holing proxy: 5-15 s after the cut, docs/security.md), so a node that
# reconnects after finding it first waits here at most about one more period.
STALE_STREAM_SECONDS = 2 * dict(SERVER_OPTIONS)["grpc.keepalive_time_ms"] / 1000


@dataclass
class _Stream:
    """A member's open Connect stream: where from, and done when it has ended."""

    peer: str
    ended: asyncio.Future[None]


class CoordinatorService(wire_pb2_grpc.CoordinatorServicer):
    def __init__(self, jobs: JobManager, relay: Relay) -> None:
        self.jobs, self.relay = jobs, relay
        self._streams: dict[str, _Stream] = {}  # one live Connect stream per member

    async def Submit(self, request, context):  # noqa: N802 (gRPC names)
        try:
            signed = SignedJob(request.envelope, request.signature)
            job_id = self.jobs.submit(signed, current_caller().name)
        except JointstatsError as exc:
            await context.abort(exc.grpc_code, str(exc))
        return wire_pb2.SubmitReply(job_id=job_id)

    async def GetStatus(self, request, context):  # noqa: N802
        caller = current_caller().name
        try:
            record = self.jobs.status(request.job_id, caller)
        except JobError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        wait = min(max(request.wait_seconds, 0.0), MAX_STATUS_WAIT_SECONDS)
        deadline = time.monotonic() + wait
        while not record.finished and time.monotonic() < deadline:
            if not request.until_finished and record.updated_at != request.updated_after:
                break
            await self.jobs.store.wait_for_change(record.job_id, deadline - time.monotonic())
            record = self.jobs.status(record.job_id, caller)
        nodes = [
            wire_pb2.NodeState(node=n, state=s["state"], reason=s["reason"])
            for n, s in record.nodes.items()
        ]
        return wire_pb2.JobStatus(
            job_id=record.job_id,
            state=record.state,
            reason=record.reason,
            nodes=nodes,
            submitted_at=record.submitted_at,
            updated_at=record.updated_at,
        )

    async def GetResult(self, request, context):  # noqa: N802
        try:
            record = self.jobs.status(request.job_id, current_caller().name)
        except JobError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if record.state == "failed":
            await context.abort(grpc.StatusCode.ABORTED, f"job failed: {record.reason}")
        if record.state != "released":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job has no result yet")
        return wire_pb2.ResultReply(job_id=record.job_id, result_json=record.result_json)

    async def Plan(self, request, context):  # noqa: N802
        try:
            plan = self.jobs.plan(request.job_json)
        except JointstatsError as exc:
            await context.abort(exc.grpc_code, str(exc))
        return wire_pb2.PlanReply(parties=plan.parties, data_parties=plan.data_parties)

    async def ListNodes(self, request, context):  # noqa: N802
        view = self.jobs.view()
        nodes = [
            wire_pb2.NodeInfo(
                name=name,
                role=role,
                online=name in view.online,
                datasets=sorted(view.datasets.get(name, ())),
            )
            for name, role in sorted(view.roles.items())
            if role in ("node", "compute")
        ]
        return wire_pb2.ListNodesReply(nodes=nodes)

    async def Connect(self, request_iterator, context):  # noqa: N802
        name = current_caller().name
        try:
            first = await asyncio.wait_for(anext(request_iterator), CONNECT_HELLO_SECONDS)
        except (StopAsyncIteration, TimeoutError):
            first = None
        if first is None or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node stream opens with hello")
        stream = await self._claim(name, context)
        conn = NodeConn(name, datasets=set(first.hello.datasets))
        self._register(name, conn)
        # tells the node its stream is registered, so that it logs "connected" only now
        await context.send_initial_metadata(((REGISTERED_HEADER, "1"),))
        reader = asyncio.create_task(self._read_node(name, conn, request_iterator))
        try:
            while True:
                getter = asyncio.create_task(conn.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when="FIRST_COMPLETED")
                if getter not in done or getter.result() is None:  # stream ended or revoked
                    getter.cancel()
                    break
                yield getter.result()
        finally:
            reader.cancel()
            self.jobs.on_disconnect(name, conn)
            log.info("NODE_DISCONNECTED node=%s", name)
            if self._streams.get(name) is stream:
                del self._streams[name]
            stream.ended.set_result(None)

    async def _claim(self, name: str, context) -> _Stream:
        """Make this stream the member's one stream. While another one is open, wait up to
        STALE_STREAM_SECONDS for it to end (the node may have found its connection dead before
        we did); if it is still alive then, another process runs with this member's keys:
        refuse this one (the node exits; the live stream is untouched)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALE_STREAM_SECONDS
        while (old := self._streams.get(name)) is not None:
            if loop.time() >= deadline:
                reason = (
                    f"{name} is already connected from {old.peer}; is another node running "
                    "with these keys?"
                )
                log.warning("AUTH_REFUSED method=Connect node=%s reason=%s", name, reason)
                self.jobs.audit.append(
                    "AUTH_REFUSED",
                    principal=name,
                    method="Connect",
                    reason=reason,
                    peer=context.peer(),
                )
                await context.abort(grpc.StatusCode.ALREADY_EXISTS, reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(old.ended), deadline - loop.time())
        stream = _Stream(context.peer(), loop.create_future())
        self._streams[name] = stream
        return stream

    async def close_streams(self, grace: float) -> None:
        """End every node stream ourselves: streams that gRPC cancels at stop print tracebacks."""
        for conn in list(self.jobs.nodes.values()):
            conn.outbox.put_nowait(None)
        ended = [stream.ended for stream in self._streams.values()]
        if ended:
            await asyncio.wait(ended, timeout=grace)

    def _register(self, name: str, conn: NodeConn) -> None:
        old = self.jobs.nodes.get(name)
        if old is not None:
            self.jobs.on_disconnect(name, old)  # (its stream has ended; its jobs fail)
        self.jobs.nodes[name] = conn
        self.jobs.on_connect(name)  # jobs still in their offer phase are offered again
        log.info("NODE_CONNECTED node=%s datasets=%s", name, sorted(conn.datasets))

    async def _read_node(self, name: str, conn: NodeConn, request_iterator) -> None:
        async for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind == "hello":
                conn.datasets = set(message.hello.datasets)
            elif kind == "decision":
                self.jobs.on_decision(name, message.decision)
            elif kind == "report":
                self.jobs.on_report(name, message.report)

    async def Relay(self, request_iterator, context):  # noqa: N802
        name = current_caller().name
        try:
            hello = await asyncio.wait_for(anext(request_iterator), RELAY_HELLO_SECONDS)
            session, pid = self.relay.join(hello, name)
        except (StopAsyncIteration, TimeoutError, JointstatsError) as exc:
            self.jobs.audit.append("AUTH_REFUSED", method="Relay", principal=name, reason=str(exc))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc) or "empty relay")
        inbox = session.inbox(pid)
        pump = asyncio.create_task(self._pump(session, pid, request_iterator))
        try:
            while (frame := await inbox.get()) is not CLOSE:
                self.relay.delivered(session, pid, frame)
                yield frame
        finally:
            pump.cancel()

    async def _pump(self, session, pid: int, request_iterator) -> None:
        try:
            async for frame in request_iterator:
                self.relay.route(session, pid, frame)
            session.inbox(pid).put_nowait(CLOSE)  # the party half-closed: all it sent is routed
        except JointstatsError as exc:
            self.jobs.fail(
                session.job_id, f"relay refused a frame from {session.parties[pid]}: {exc}"
            )


async def _watch_roster(roster_file: RosterFile, jobs: JobManager) -> None:
    """Apply roster edits while running: revoked members lose their streams at once."""
    seen = roster_file.version
    while True:
        await asyncio.sleep(ROSTER_POLL_SECONDS)
        roster_file.refresh()
        if roster_file.version == seen:
            continue
        seen = roster_file.version
        log.info("ROSTER_RELOADED members=%s", sorted(roster_file.roster.members))
        for name, conn in list(jobs.nodes.items()):
            member = roster_file.roster.members.get(name)
            if member is None or member.role not in ("node", "compute"):
                jobs.audit.append("MEMBER_REVOKED", principal=name)
                conn.outbox.put_nowait(None)


async def serve(config: CoordinatorConfig) -> None:
    roster_file = RosterFile(config.roster)
    roster = roster_file.roster
    identity = Identity.load(config.keys)
    store = JobStore(config.db)
    failed = store.fail_unfinished("the coordinator restarted while the job was in flight")
    if failed:
        log.warning("marked %d unfinished job(s) failed after restart", failed)
    relay = Relay()
    audit = AuditLog(config.db.parent / "audit.jsonl", identity, identity.name)
    jobs = JobManager(store, roster, relay, config.job_timeout, audit)
    options = [*SERVER_OPTIONS, ("grpc.so_reuseport", 0)]  # a port in use is an error
    server = grpc.aio.server(interceptors=[RosterAuth(roster, audit)], options=options)
    service = CoordinatorService(jobs, relay)
    wire_pb2_grpc.add_CoordinatorServicer_to_server(service, server)
    try:
        port = server.add_secure_port(config.listen, server_credentials(identity, roster_file))
    except RuntimeError:  # newer grpc versions raise where older ones returned 0
        port = 0
    if port == 0:
        raise JointstatsError(
            f"cannot listen on {config.listen}: the port is in use (another coordinator?) or "
            "the address is not one of this host's"
        )
    await server.start()
    log.info("COORDINATOR_STARTED listen=%s port=%d", config.listen, port)
    if config.port_file is not None:
        tmp = Path(str(config.port_file) + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(config.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_roster(roster_file, jobs))
    await stop.wait()
    watcher.cancel()
    await service.close_streams(grace=2.0)
    await server.stop(grace=2.0)
    store.close()

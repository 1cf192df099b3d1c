"""Relay of MPC traffic between the parties of a session.

The coordinator routes frames by session and party id and stamps the sender's party id from
the caller's certificate; the frames are sealed end to end, so it sees sizes and timing only.

Frames wait in memory until their party reads them. What may wait is bounded per party of a
session and across all sessions of the relay; a frame over either bound fails its job (the
caller turns the JobError into a failed job), never the coordinator.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from jointstats.errors import AuthError, JobError
from jointstats.v1 import wire_pb2

CLOSE = None
MAX_BACKLOG_BYTES = 256 * 1024 * 1024  # frames queued for one party of one session
MAX_RELAY_BACKLOG_BYTES = 2 * 1024 * 1024 * 1024  # frames queued for all parties of all sessions


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


@dataclass
class Backlog:
    """Bytes relayed but not yet read, across all sessions of one relay, and the bounds."""

    per_party: int
    total: int
    queued: int = 0


@dataclass
class RelaySession:
    session_id: str
    job_id: str
    parties: tuple[str, ...]
    limits: Backlog  # shared by all sessions of the relay
    inboxes: dict[int, asyncio.Queue] = field(default_factory=dict)
    backlog: dict[int, int] = field(default_factory=dict)
    closed: bool = False

    def inbox(self, pid: int) -> asyncio.Queue:
        if pid not in self.inboxes:
            self.inboxes[pid] = asyncio.Queue()
        return self.inboxes[pid]

    def close(self) -> None:
        """End every party's stream; what is still queued no longer counts against the relay."""
        if not self.closed:
            self.closed = True
            self.limits.queued -= sum(self.backlog.values())
            self.backlog.clear()
        for pid in range(len(self.parties)):
            self.inbox(pid).put_nowait(CLOSE)


class Relay:
    def __init__(self, per_party: int | None = None, total: int | None = None) -> None:
        self.sessions: dict[str, RelaySession] = {}
        self.limits = Backlog(
            MAX_BACKLOG_BYTES if per_party is None else per_party,
            MAX_RELAY_BACKLOG_BYTES if total is None else total,
        )

    def open(self, session_id: str, job_id: str, parties: tuple[str, ...]) -> None:
        self.sessions[session_id] = RelaySession(session_id, job_id, parties, self.limits)

    def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def join(self, hello: wire_pb2.RelayFrame, caller: str) -> tuple[RelaySession, int]:
        session = self.sessions.get(hello.session_id)
        if session is None:
            raise JobError("no such MPC session (it ended or never started)")
        pid = hello.from_pid
        if not 0 <= pid < len(session.parties) or session.parties[pid] != caller:
            raise AuthError(f"{caller} is not party {pid} of this session")
        return session, pid

    @staticmethod
    def route(session: RelaySession, from_pid: int, frame: wire_pb2.RelayFrame) -> None:
        if frame.session_id != session.session_id:
            raise AuthError("frame for another session")
        if not 0 <= frame.to_pid < len(session.parties) or frame.to_pid == from_pid:
            raise JobError(f"frame addressed to no party ({frame.to_pid})")
        if session.closed:
            return  # the job is over: nobody will read it
        frame.from_pid = from_pid
        size, limits = len(frame.data), session.limits
        queued = session.backlog.get(frame.to_pid, 0) + size
        if queued > limits.per_party:
            raise JobError(
                f"{session.parties[frame.to_pid]} is not reading its MPC traffic: over "
                f"{_mib(limits.per_party)} wait for it at the relay"
            )
        if limits.queued + size > limits.total:
            raise JobError(
                f"the relay is full: over {_mib(limits.total)} of MPC traffic wait, across all "
                "sessions, for parties that have not read it"
            )
        session.backlog[frame.to_pid] = queued
        limits.queued += size
        session.inbox(frame.to_pid).put_nowait(frame)

    @staticmethod
    def delivered(session: RelaySession, pid: int, frame: wire_pb2.RelayFrame) -> None:
        if session.closed:
            return  # its backlog was released when it closed
        size = len(frame.data)
        session.backlog[pid] = session.backlog.get(pid, 0) - size
        session.limits.queued -= size

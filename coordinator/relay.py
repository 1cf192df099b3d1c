"""Relay of MPC traffic between the parties of a session.

The coordinator routes frames by session and party id and stamps the sender's party id from
the caller's certificate; the frames are sealed end to end, so it sees sizes and timing only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from jointstats.errors import AuthError, JobError
from jointstats.v1 import wire_pb2

CLOSE = None
MAX_BACKLOG_BYTES = 1024 * 1024 * 1024  # frames queued for one party before the job fails


@dataclass
class RelaySession:
    session_id: str
    job_id: str
    parties: tuple[str, ...]
    inboxes: dict[int, asyncio.Queue] = field(default_factory=dict)
    backlog: dict[int, int] = field(default_factory=dict)

    def inbox(self, pid: int) -> asyncio.Queue:
        if pid not in self.inboxes:
            self.inboxes[pid] = asyncio.Queue()
        return self.inboxes[pid]

    def close(self) -> None:
        for pid in range(len(self.parties)):
            self.inbox(pid).put_nowait(CLOSE)


class Relay:
    def __init__(self) -> None:
        self.sessions: dict[str, RelaySession] = {}

    def open(self, session_id: str, job_id: str, parties: tuple[str, ...]) -> None:
        self.sessions[session_id] = RelaySession(session_id, job_id, parties)

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
        frame.from_pid = from_pid
        queued = session.backlog.get(frame.to_pid, 0) + len(frame.data)
        if queued > MAX_BACKLOG_BYTES:
            raise JobError(f"party {frame.to_pid} is not reading; relay backlog over 1 GiB")
        session.backlog[frame.to_pid] = queued
        session.inbox(frame.to_pid).put_nowait(frame)

    @staticmethod
    def delivered(session: RelaySession, pid: int, frame: wire_pb2.RelayFrame) -> None:
        session.backlog[pid] = session.backlog.get(pid, 0) - len(frame.data)

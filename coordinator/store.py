"""The coordinator's job store (SQLite): job records survive a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    envelope BLOB NOT NULL,
    signature BLOB NOT NULL,
    submitted_by TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    nodes_json TEXT NOT NULL DEFAULT '{}',
    result_json BLOB,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""
TERMINAL = ("released", "failed")


@dataclass
class JobRecord:
    job_id: str
    envelope: bytes
    signature: bytes
    submitted_by: str
    state: str = "submitted"
    reason: str = ""
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    result_json: bytes | None = None
    submitted_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


class JobStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._changed: dict[str, asyncio.Event] = {}  # jobs someone waits on (long polls)

    def fail_unfinished(self, reason: str) -> int:
        """At start-up: jobs that were in flight when the coordinator stopped cannot resume."""
        cursor = self._db.execute(
            "UPDATE jobs SET state = 'failed', reason = ?, updated_at = ? "
            "WHERE state NOT IN ('released', 'failed')",
            (reason, time.time()),
        )
        return cursor.rowcount

    def save(self, job: JobRecord) -> None:
        job.updated_at = time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.job_id,
                job.envelope,
                job.signature,
                job.submitted_by,
                job.state,
                job.reason,
                json.dumps(job.nodes),
                job.result_json,
                job.submitted_at,
                job.updated_at,
            ),
        )
        event = self._changed.pop(job.job_id, None)
        if event is not None:
            event.set()

    async def wait_for_change(self, job_id: str, seconds: float) -> None:
        """Return when the job's record is saved again, or after `seconds`."""
        event = self._changed.setdefault(job_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def get(self, job_id: str) -> JobRecord | None:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return JobRecord(
            job_id=row[0],
            envelope=row[1],
            signature=row[2],
            submitted_by=row[3],
            state=row[4],
            reason=row[5],
            nodes=json.loads(row[6]),
            result_json=row[7],
            submitted_at=row[8],
            updated_at=row[9],
        )

    def close(self) -> None:
        self._db.close()

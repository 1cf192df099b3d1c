"""A node's persistent state (SQLite in its state_dir): jobs seen (replay protection), the
differential-privacy budget ledger, the jobs whose session started (a charge is refunded
only for a job whose session never started: nothing of its data was computed on) and the
approval queue (jobs held for the operator, `approval = "manual"`). The operator's commands
(`jointstats node approve|deny`, another process) write decisions here; the node reads them."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen (job_id TEXT PRIMARY KEY, nonce TEXT UNIQUE, at REAL)",
    "CREATE TABLE IF NOT EXISTS ledger (job_id TEXT, dataset TEXT, epsilon REAL, at REAL, "
    "PRIMARY KEY (job_id, dataset))",
    "CREATE TABLE IF NOT EXISTS started (job_id TEXT PRIMARY KEY, at REAL)",
    "CREATE TABLE IF NOT EXISTS approvals (job_id TEXT PRIMARY KEY, received REAL, "
    "expires REAL, analyst TEXT, purpose TEXT, envelope BLOB, signature BLOB, parties TEXT, "
    "data_parties TEXT, epsilon REAL, statement TEXT, status TEXT, reason TEXT, "
    "decided_by TEXT, decided_at REAL, handled INTEGER)",
)
APPROVAL_COLUMNS = (
    "job_id, received, expires, analyst, purpose, envelope, signature, parties, data_parties, "
    "epsilon, statement, status, reason, decided_by, decided_at, handled"
)


@dataclass(frozen=True)
class Approval:
    """A job held for the operator: pending, then approved, denied or expired."""

    job_id: str
    received: float
    expires: float  # the analyst's signed expiry
    analyst: str
    purpose: str
    envelope: bytes
    signature: bytes
    parties: list[str]
    data_parties: list[str]
    epsilon: float
    statement: dict[str, Any]  # the egress statement (node/egress.py)
    status: str  # pending | approved | denied | expired
    reason: str = ""
    decided_by: str = ""
    decided_at: float = 0.0
    handled: bool = False  # the node has logged the decision and told the coordinator

    @classmethod
    def from_row(cls, row: tuple) -> Approval:
        values = list(row)
        values[5], values[6] = bytes(values[5]), bytes(values[6])
        values[7], values[8], values[10] = (json.loads(values[i]) for i in (7, 8, 10))
        values[15] = bool(values[15])
        return cls(*values)


class NodeState:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")  # the operator's commands write here too
        self._lock = threading.Lock()
        for statement in SCHEMA:
            self._db.execute(statement)

    def first_sight(self, job_id: str, nonce: str) -> bool:
        """Record a job; False when its id or nonce was seen before (a replay)."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO seen VALUES (?, ?, ?)", (job_id, nonce, time.time()))
            except sqlite3.IntegrityError:
                return False
            return True

    def spent(self, dataset: str) -> float:
        row = self._db.execute(
            "SELECT coalesce(sum(epsilon), 0) FROM ledger WHERE dataset = ?", (dataset,)
        ).fetchone()
        return float(row[0])

    def charge(self, job_id: str, charges: dict[str, float], budgets: dict[str, float]) -> None:
        """Charge every dataset at once, or none: raises ValueError naming the first over budget."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for dataset, epsilon in charges.items():
                    budget = budgets.get(dataset, 0.0)
                    spent = self.spent(dataset)
                    if spent + epsilon > budget + 1e-12:
                        raise ValueError(
                            f"dataset {dataset}: epsilon {epsilon:g} would exceed its budget "
                            f"({spent:g} of {budget:g} spent)"
                        )
                    self._db.execute(
                        "INSERT INTO ledger VALUES (?, ?, ?, ?)",
                        (job_id, dataset, epsilon, time.time()),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def mark_started(self, job_id: str) -> None:
        """Record that the job's session started: its charges are never refunded after this."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO started VALUES (?, ?)", (job_id, time.time()))

    def refund(self, job_id: str) -> dict[str, float]:
        """Remove the charges of a job whose session never started; returns what was refunded
        (dataset -> epsilon), empty when nothing was charged, it was refunded before, or the
        session started. Idempotent."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM started WHERE job_id = ?", (job_id,)).fetchone():
                    refunded: dict[str, float] = {}
                else:
                    rows = self._db.execute(
                        "SELECT dataset, epsilon FROM ledger WHERE job_id = ?", (job_id,)
                    ).fetchall()
                    refunded = {str(dataset): float(epsilon) for dataset, epsilon in rows}
                    self._db.execute("DELETE FROM ledger WHERE job_id = ?", (job_id,))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return refunded

    def hold(self, approval: Approval) -> None:
        """Queue a job for the operator (idempotent: a job already queued keeps its state)."""
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO approvals ({APPROVAL_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    approval.job_id, approval.received, approval.expires, approval.analyst,
                    approval.purpose, approval.envelope, approval.signature,
                    json.dumps(approval.parties), json.dumps(approval.data_parties),
                    approval.epsilon, json.dumps(approval.statement), approval.status,
                    approval.reason, approval.decided_by, approval.decided_at,
                    int(approval.handled),
                ),
            )  # fmt: skip

    def approval(self, job_id: str) -> Approval | None:
        row = self._db.execute(
            f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE job_id = ?", (job_id,)
        ).fetchone()
        return Approval.from_row(row) if row else None

    def approvals(self, where: str = "1", *params: Any) -> list[Approval]:
        rows = self._db.execute(
            f"SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {where} ORDER BY received", params
        ).fetchall()
        return [Approval.from_row(row) for row in rows]

    def decide(self, job_id: str, status: str, reason: str, by: str) -> bool:
        """The operator's decision on a pending job; False when it is not pending (any more)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE approvals SET status = ?, reason = ?, decided_by = ?, decided_at = ? "
                "WHERE job_id = ? AND status = 'pending'",
                (status, reason, by, time.time(), job_id),
            )
            return cursor.rowcount == 1

    def mark_handled(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE approvals SET handled = 1 WHERE job_id = ?", (job_id,))

    def close(self) -> None:
        self._db.close()

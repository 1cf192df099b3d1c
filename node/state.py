"""A node's persistent state (SQLite in its state_dir): jobs seen (replay protection), the
differential-privacy budget ledger and the jobs whose session started (a charge is refunded
only for a job whose session never started: nothing of its data was computed on)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen (job_id TEXT PRIMARY KEY, nonce TEXT UNIQUE, at REAL)",
    "CREATE TABLE IF NOT EXISTS ledger (job_id TEXT, dataset TEXT, epsilon REAL, at REAL, "
    "PRIMARY KEY (job_id, dataset))",
    "CREATE TABLE IF NOT EXISTS started (job_id TEXT PRIMARY KEY, at REAL)",
)


class NodeState:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
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

    def close(self) -> None:
        self._db.close()

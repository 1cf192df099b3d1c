"""A node's persistent state (SQLite in its state_dir): jobs seen (replay protection) and the
differential-privacy budget ledger."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen (job_id TEXT PRIMARY KEY, nonce TEXT UNIQUE, at REAL)",
    "CREATE TABLE IF NOT EXISTS ledger (job_id TEXT, dataset TEXT, epsilon REAL, at REAL, "
    "PRIMARY KEY (job_id, dataset))",
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

    def close(self) -> None:
        self._db.close()

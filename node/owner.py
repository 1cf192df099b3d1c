"""What a data owner reads about its node, without running it: the grants of its policy (who
may use which datasets and columns, until when, for what) and its ε ledger (budget, spent and
left per dataset). Used by `jointstats node grants` and the operator console; never a value
of the data."""

from __future__ import annotations

import datetime
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from jointstats.config import NodeConfig
from jointstats.keys import Roster


@dataclass(frozen=True)
class Grant:
    analyst: str  # the roster name, or the policy's `name`, or "(not in roster)"
    fingerprint: str
    datasets: dict[str, tuple[str, ...]]
    expires: datetime.date | None
    purpose: str
    status: str  # "no end", "until 2027-06-30 (412 days)", "EXPIRED on ..."


@dataclass(frozen=True)
class Budget:
    dataset: str
    budget: float
    spent: float

    @property
    def left(self) -> float:
        return max(self.budget - self.spent, 0.0)


@dataclass(frozen=True)
class Charge:
    job_id: str
    dataset: str
    epsilon: float
    at: str  # UTC, seconds


def _status(expires: datetime.date | None, today: datetime.date) -> str:
    if expires is None:
        return "no end"
    if today > expires:
        return f"EXPIRED on {expires}"
    return f"until {expires} ({(expires - today).days} days left)"


def grants(config: NodeConfig, roster: Roster | None = None) -> list[Grant]:
    """One row per `[[analysts]]` entry, in policy order."""
    names = {}
    if roster is not None:
        names = {m.signing_fingerprint: m.name for m in roster.members.values()}
    today = datetime.datetime.now(datetime.UTC).date()
    rows = []
    for fingerprint, datasets in config.policy.analysts.items():
        terms = config.policy.terms.get(fingerprint)
        name = names.get(fingerprint) or (terms.name if terms and terms.name else "")
        if roster is not None and fingerprint not in names:
            name = f"{name} (not in roster)".strip()
        expires = terms.expires if terms else None
        rows.append(
            Grant(
                name or "?",
                fingerprint,
                dict(datasets),
                expires,
                terms.purpose if terms else "",
                _status(expires, today),
            )
        )
    return rows


def _ledger_db(config: NodeConfig) -> sqlite3.Connection | None:
    """The node's state database, read-only (the running node is its only writer)."""
    path = Path(config.state_dir) / "node.sqlite"
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def budgets(config: NodeConfig) -> list[Budget]:
    """Budget, spent and left per dataset (served datasets and those with a budget)."""
    datasets = list(dict.fromkeys([*config.datasets, *config.policy.budgets]))
    spent: dict[str, float] = {}
    db = _ledger_db(config)
    if db is not None:
        try:
            rows = db.execute("SELECT dataset, sum(epsilon) FROM ledger GROUP BY dataset")
            spent = {str(d): float(e) for d, e in rows}
        except sqlite3.OperationalError:  # a node that never started: no ledger table yet
            spent = {}
        finally:
            db.close()
    return [Budget(d, config.policy.budgets.get(d, 0.0), spent.get(d, 0.0)) for d in datasets]


def charges(config: NodeConfig, limit: int = 200) -> list[Charge]:
    """The ledger's entries, newest first."""
    db = _ledger_db(config)
    if db is None:
        return []
    try:
        rows = db.execute(
            "SELECT job_id, dataset, epsilon, at FROM ledger ORDER BY at DESC LIMIT ?", (limit,)
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [
        Charge(
            str(job),
            str(dataset),
            float(eps),
            datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        for job, dataset, eps, at in rows
    ]


def columns_text(columns: tuple[str, ...]) -> str:
    return "all columns" if "*" in columns else ", ".join(columns)

"""One MPC session, described once: what the node hands its session worker, and the
description every party must hold identically before any share is sent.

The coordinator tells each party the session's parties and effective disclosure settings. A
hostile coordinator could tell each party something different (a different `min_cell` per
party makes Shamir shares of c - k_i reconstruct c - 0: every cell released). So each party
hashes its own view of the session (`SessionDescription.digest`), binds that digest into its
signed relay handshake with every peer, and refuses a peer whose digest differs. The same digest
is signed with the released table, so the analyst can check what the parties agreed on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from jointstats.jobs import canonical_json

RESULT_SIGNING_CONTEXT = b"jointstats result v1\x00"


@dataclass(frozen=True)
class SessionDescription:
    """Everything a session's parties must agree on. Identical at every honest party."""

    job_id: str
    session_id: str
    envelope_sha256: str  # the analyst's signed envelope, which fixes the job and its parties
    protocol: str
    protocol_version: int
    parties: tuple[str, ...]
    data_parties: tuple[str, ...]
    disclosure: dict[str, Any]  # effective settings: min_cell, protection, release_zeros, ...
    # libraries whose results every party must reproduce exactly (the suppression pattern
    # depends on the LP solver's choice): a version mismatch fails at the handshake
    stack: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["parties"], doc["data_parties"] = list(self.parties), list(self.data_parties)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SessionDescription:
        fields = dict(doc)
        fields["parties"] = tuple(fields["parties"])
        fields["data_parties"] = tuple(fields["data_parties"])
        return cls(**fields)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(canonical_json(self.to_dict())).digest()


@dataclass(frozen=True)
class SessionSpec:
    """What a node writes to its session worker (one JSON line)."""

    description: SessionDescription
    job_json: str
    node: str
    coordinator: str
    key_dir: str
    roster: str
    datasets: dict[str, Any]
    timeout: float
    max_rows: int = 0
    limits: dict[str, int] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.description.job_id

    @property
    def session_id(self) -> str:
        return self.description.session_id

    @property
    def parties(self) -> list[str]:
        return list(self.description.parties)

    @property
    def data_parties(self) -> list[str]:
        return list(self.description.data_parties)

    @property
    def min_cell(self) -> int:
        return int(self.description.disclosure["min_cell"])

    @property
    def pid(self) -> int:
        return self.description.parties.index(self.node)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["description"] = self.description.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SessionSpec:
        fields = dict(doc)
        fields["description"] = SessionDescription.from_dict(fields["description"])
        return cls(**fields)


def signed_part(result: dict[str, Any]) -> dict[str, Any]:
    """What the parties sign of a released result: the table and the metadata every party
    computes identically (timings differ per party and are left out)."""
    metadata = {
        k: v
        for k, v in result.get("metadata", {}).items()
        if k not in ("timings", "timings_by_node")
    }
    return {"columns": result["columns"], "rows": result["rows"], "metadata": metadata}


def table_digest(result: dict[str, Any]) -> str:
    """SHA-256 of the signed part of a result, the same at every party."""
    return hashlib.sha256(canonical_json(signed_part(result))).hexdigest()


def result_message(session_digest: bytes, result: dict[str, Any]) -> bytes:
    """The bytes each party signs with its roster key when it reports a released table."""
    return RESULT_SIGNING_CONTEXT + session_digest + bytes.fromhex(table_digest(result))


def library_stack() -> dict[str, str]:
    """Versions of the libraries that must match across the parties of a session."""
    from importlib.metadata import version

    return {name: version(name) for name in ("mpyc", "scipy")}

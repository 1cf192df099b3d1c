"""Signed jobs: the analyst signs (Ed25519) an envelope holding the job, the session's parties
(as the coordinator planned them and the analyst saw them), a job id, a nonce and an expiry.
Every node verifies it against the roster before anything else, so a coordinator that changes
one byte of a job, or brings in a party the analyst did not sign, cannot get a node to run it."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from jointstats.errors import AuthError, JobError
from jointstats.jobs import canonical_json
from jointstats.keys import Identity, Roster

DEFAULT_TTL_SECONDS = 24 * 3600
ENVELOPE_FIELDS = {"job", "job_id", "nonce", "expires", "analyst", "parties", "data_parties"}


@dataclass(frozen=True)
class Envelope:
    """What the analyst signed."""

    job: dict[str, Any]
    job_id: str
    nonce: str
    expires: float
    analyst: str
    parties: tuple[str, ...]  # the MPC session's parties, in party-id order
    data_parties: tuple[str, ...]  # those of them that input data

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "job": self.job,
                "job_id": self.job_id,
                "nonce": self.nonce,
                "expires": self.expires,
                "analyst": self.analyst,
                "parties": list(self.parties),
                "data_parties": list(self.data_parties),
            }
        )

    @property
    def job_bytes(self) -> bytes:
        return canonical_json(self.job)


@dataclass(frozen=True)
class SignedJob:
    envelope: bytes
    signature: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.envelope).hexdigest()


def sign_job(
    job: dict[str, Any],
    identity: Identity,
    parties: Sequence[str],
    data_parties: Sequence[str],
    ttl: float = DEFAULT_TTL_SECONDS,
) -> SignedJob:
    """Sign a job together with the session's parties (from the coordinator's plan)."""
    envelope = Envelope(
        job=job,
        job_id=uuid.uuid4().hex[:16],
        nonce=base64.b64encode(secrets.token_bytes(16)).decode(),
        expires=round(time.time() + ttl, 3),
        analyst=identity.name,
        parties=tuple(parties),
        data_parties=tuple(data_parties),
    )
    data = envelope.to_bytes()
    return SignedJob(data, identity.sign_private.sign(data))


def _parse(data: bytes) -> Envelope:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JobError("signed job is not valid JSON") from None
    if not isinstance(doc, dict) or set(doc) != ENVELOPE_FIELDS:
        raise JobError(
            "signed job envelope must hold exactly: " + ", ".join(sorted(ENVELOPE_FIELDS))
        )
    if not isinstance(doc["job"], dict):
        raise JobError("signed job envelope: `job` must be a table")
    if not all(_names(doc[key]) for key in ("parties", "data_parties")):
        raise JobError("signed job envelope: `parties` and `data_parties` must list node names")
    try:
        return Envelope(
            doc["job"],
            str(doc["job_id"]),
            str(doc["nonce"]),
            float(doc["expires"]),
            str(doc["analyst"]),
            tuple(doc["parties"]),
            tuple(doc["data_parties"]),
        )
    except (TypeError, ValueError):
        raise JobError("signed job envelope has a malformed field") from None


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def verify_job(
    signed: SignedJob, roster: Roster, now: float | None = None, check_expiry: bool = True
) -> Envelope:
    """Check signature (by an analyst in the roster) and expiry; return the envelope."""
    envelope = _parse(signed.envelope)
    member = roster.members.get(envelope.analyst)
    if member is None or member.role != "analyst":
        raise AuthError(f"job signed by {envelope.analyst!r}, who is not an analyst in the roster")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(member.sign_public).verify(
            signed.signature, signed.envelope
        )
    except InvalidSignature:
        raise AuthError(
            "the job's signature does not match its content (altered or forged)"
        ) from None
    if check_expiry and envelope.expires < (time.time() if now is None else now):
        raise AuthError(f"job {envelope.job_id} has expired; sign and submit it again")
    return envelope

"""A node's audit log: append-only JSON lines, hash-chained and signed with the node's Ed25519 key.

One line per event (schema and event names in docs/audit.md):

    {"seq", "time", "node", "event", "job_id", "principal", "fields", "prev", "key", "sig"}

`prev` is the SHA-256 of the previous line's bytes (64 zeros for the first), `key` the hex of the
signer's raw Ed25519 public key, `sig` the base64 signature over the canonical JSON of the entry
without `sig`. Every line is written in canonical form, so any change to any byte of the file is
found by `verify`, up to the last line; cutting whole lines off the end is not (see docs/audit.md).

Callers pass dataset and column names, counts, digests and fingerprints in `fields`, never
microdata values or shares: the log is meant to be shown to others.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from jointstats.errors import AuditError, ConfigError
from jointstats.keys import Identity

__all__ = [
    "COORDINATOR_EVENTS",
    "GENESIS",
    "NODE_EVENTS",
    "AuditLog",
    "VerifyReport",
    "canonical",
    "verify",
]

GENESIS = "0" * 64
NODE_EVENTS = (
    "JOB_RECEIVED",
    "JOB_ACCEPTED",
    "JOB_REFUSED",
    "SESSION_STARTED",
    "RESULT_RELEASED",
    "SESSION_FAILED",
    "SESSION_ABORTED",
    "SESSION_MISMATCH",
    "EPSILON_REFUNDED",
    "JOB_QUEUED",
    "JOB_APPROVED",
    "JOB_DENIED",
    "JOB_EXPIRED",
)
COORDINATOR_EVENTS = (
    "JOB_SUBMITTED",
    "JOB_FAILED",
    "RESULT_RELEASED",
    "AUTH_REFUSED",
    "MEMBER_REVOKED",
)
EVENT_NAME = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*")
_SCHEMA: dict[str, type] = {
    "seq": int,
    "time": str,
    "node": str,
    "event": str,
    "job_id": str,
    "principal": str,
    "fields": dict,
    "prev": str,
    "key": str,
    "sig": str,
}


def canonical(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8; raises ValueError/TypeError for what JSON cannot hold."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of `verify`: `entries` counts the lines that checked out before the first bad one."""

    ok: bool
    entries: int
    first_bad_line: int | None = None
    reason: str = ""
    head: str = GENESIS  # hash of the last good line: the value to anchor elsewhere


def _check_line(raw: bytes, seq: int, prev: str, key: str | None) -> str:
    """Why this line is bad, or "" when it is good."""
    if not raw.endswith(b"\n"):
        return "incomplete last line (truncated write?)"
    try:
        entry = json.loads(raw[:-1].decode("utf-8"))
        if not isinstance(entry, dict):
            return "not a JSON object"
        if canonical(entry) != raw[:-1]:
            return "not in canonical form (edited?)"
    except (ValueError, TypeError, RecursionError):
        return "not valid JSON (truncated or garbled)"
    if set(entry) != set(_SCHEMA) or any(
        type(entry[name]) is not kind for name, kind in _SCHEMA.items()
    ):
        return "fields missing, extra or of the wrong type"
    if not EVENT_NAME.fullmatch(entry["event"]):
        return f"event name {entry['event']!r} is not UPPER_SNAKE"
    if entry["seq"] != seq:
        return f"seq {entry['seq']} where {seq} was expected (entry removed, added or moved)"
    if entry["prev"] != prev:
        return "prev does not match the hash of the line before (entry removed, changed or moved)"
    if key is not None and entry["key"] != key:
        return "signed by a different key than expected"
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry["key"]))
        sig = base64.b64decode(entry["sig"], validate=True)
        if base64.b64encode(sig).decode() != entry["sig"]:
            return "signature is not canonical base64"
        body = {name: value for name, value in entry.items() if name != "sig"}
        public.verify(sig, canonical(body))
    except (ValueError, binascii.Error, InvalidSignature):
        return "signature does not verify (entry changed)"
    return ""


def verify(path: Path, public_key: bytes | None = None) -> VerifyReport:
    """Check every line of an audit log; report the first bad one. Never raises on content.

    Without `public_key`, all entries must be signed by the key of the first entry.
    """
    key = public_key.hex() if public_key is not None else None
    entries, prev = 0, GENESIS
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                reason = _check_line(raw, number, prev, key)
                if reason:
                    return VerifyReport(False, entries, number, reason, prev)
                if key is None:
                    key = json.loads(raw)["key"]
                entries, prev = number, hashlib.sha256(raw[:-1]).hexdigest()
    except OSError as exc:
        return VerifyReport(False, entries, None, f"cannot read: {exc.strerror or exc}", prev)
    return VerifyReport(True, entries, None, "", prev)


class AuditLog:
    """The append-only log of one node; one writer process, thread-safe within it."""

    def __init__(self, path: Path, identity: Identity, node: str) -> None:
        self.path = Path(path)
        self.node = node
        self._private = identity.sign_private
        public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key = public.hex()
        self._lock = threading.Lock()
        self._broken = False
        self._seq, self._prev = 0, GENESIS
        if self.path.exists():
            report = verify(self.path, public)
            if not report.ok:
                where = f"line {report.first_bad_line}" if report.first_bad_line else "file"
                raise ConfigError(
                    f"audit log {self.path} is damaged ({where}: {report.reason}); refusing to "
                    f"append. Run `jointstats audit verify {self.path}`, then move the file aside "
                    "as evidence so that the node starts a new log"
                )
            self._seq, self._prev = report.entries, report.head
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def head(self) -> str:
        """SHA-256 of the last line written: anchor it elsewhere to pin the whole history."""
        return self._prev

    def append(self, event: str, job_id: str = "", principal: str = "", **fields: Any) -> dict:
        """Write one signed entry and fsync it; returns the entry as written.

        `fields` holds JSON values only: names, counts, digests, never microdata.
        """
        if not EVENT_NAME.fullmatch(event):
            raise AuditError(f"audit event {event!r} is not UPPER_SNAKE")
        try:
            fields = json.loads(canonical(fields))
        except (ValueError, TypeError) as exc:
            raise AuditError(f"audit event {event}: fields are not plain JSON ({exc})") from None
        with self._lock:
            if self._broken:
                raise AuditError(f"audit log {self.path} failed earlier; restart the node")
            now = datetime.datetime.now(datetime.UTC)
            entry: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                "node": self.node,
                "event": event,
                "job_id": job_id,
                "principal": principal,
                "fields": fields,
                "prev": self._prev,
                "key": self._key,
            }
            entry["sig"] = base64.b64encode(self._private.sign(canonical(entry))).decode()
            line = canonical(entry)
            try:
                self._write(line + b"\n")
            except OSError as exc:
                self._broken = True
                raise AuditError(f"cannot write audit log {self.path}: {exc}") from None
            self._seq, self._prev = entry["seq"], hashlib.sha256(line).hexdigest()
            return entry

    def _write(self, data: bytes) -> None:
        created = not self.path.exists()
        with open(self.path, "ab") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if created:  # make the new directory entry durable too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

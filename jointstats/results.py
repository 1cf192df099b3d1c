"""Released results as pandas DataFrames and tidy files, and their end-to-end verification.

A released result carries the session description the parties agreed on, the analyst's signed
envelope and one Ed25519 signature per party over (session digest, table digest).
`verify_result` checks all of it against the roster, so a coordinator that alters one count
after the release, drops a party's signature, or swaps the job is caught by the analyst.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from jointstats.errors import AuthError, ConfigError, JointstatsError
from jointstats.keys import Roster
from jointstats.session import SessionDescription, result_message
from jointstats.signing import SignedJob, verify_job

if TYPE_CHECKING:  # the coordinator verifies results without loading pandas
    import pandas as pd

SUFFIXES = ("", ".csv", ".json", ".parquet")
SIGNED_FIELDS = ("columns", "rows", "metadata", "session", "signatures", "envelope")


class ResultError(AuthError):
    """A result whose table, session or signatures do not verify."""


def _b64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise ResultError(f"the result's {what} is not valid base64") from None


def _check_session(session: SessionDescription, envelope: Any, signed: SignedJob) -> None:
    """The session the parties signed must be the analyst's job, parties and threshold."""
    if session.envelope_sha256 != signed.digest or session.job_id != envelope.job_id:
        raise ResultError("the result belongs to another job than the signed one")
    if (session.parties, session.data_parties) != (envelope.parties, envelope.data_parties):
        raise ResultError("the result's parties differ from those the analyst signed")
    asked = envelope.job.get("disclosure", {}).get("min_cell", 0)
    if int(session.disclosure.get("min_cell", 0)) < int(asked or 0):
        raise ResultError("the result was computed with a lower min_cell than the signed job's")


def verify_result(doc: dict[str, Any], roster: Roster, job_id: str | None = None) -> None:
    """Raise ResultError unless every party of the signed session signed exactly this table."""
    missing = [f for f in SIGNED_FIELDS if f not in doc]
    if missing:
        raise ResultError(f"the result is not signed (missing {', '.join(missing)})")
    signed = SignedJob(
        _b64(doc["envelope"], "envelope"), _b64(doc.get("envelope_signature"), "envelope signature")
    )
    try:
        envelope = verify_job(signed, roster, check_expiry=False)
        session = SessionDescription.from_dict(doc["session"])
    except JointstatsError as exc:
        raise ResultError(f"the result's job does not verify: {exc}") from None
    except (TypeError, KeyError, ValueError):
        raise ResultError("the result's session description is malformed") from None
    if job_id is not None and envelope.job_id != job_id:
        raise ResultError(f"the result is for job {envelope.job_id}, not {job_id}")
    _check_session(session, envelope, signed)
    message = result_message(session.digest, doc)
    for party in session.parties:
        member = roster.members.get(party)
        if member is None:
            raise ResultError(f"party {party} of the result is not in the roster")
        signature = _b64(doc["signatures"].get(party, ""), f"signature of {party}")
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(member.sign_public).verify(
                signature, message
            )
        except InvalidSignature:
            raise ResultError(
                f"the table does not match {party}'s signature (altered after the release, "
                "or not signed by that party); the result is refused"
            ) from None


@dataclass(frozen=True)
class Result:
    """A released table (one row per cell) and its metadata."""

    table: pd.DataFrame
    metadata: dict[str, Any]
    signed: dict[str, Any] | None = field(default=None, repr=False)  # as the parties signed it

    @classmethod
    def from_json(
        cls, data: bytes | str, roster: Roster | None = None, job_id: str | None = None
    ) -> Result:
        """Read a released result; with a roster, verify it first (ResultError if it fails)."""
        doc = json.loads(data)
        if "signed" in doc and "rows" not in doc:  # a result saved as .json by `write`
            doc = doc["signed"]
        if roster is not None:
            verify_result(doc, roster, job_id)
        import pandas as pd

        table = pd.DataFrame(doc["rows"], columns=doc["columns"])
        for column in ("count", "sum", "mean", "weighted_count"):
            if column in table:
                table[column] = pd.to_numeric(table[column])
        if "count" in table:
            table["count"] = table["count"].astype("Int64")
        table["suppressed"] = table["suppressed"].astype(bool)
        signed = {k: doc[k] for k in (*SIGNED_FIELDS, "envelope_signature") if k in doc}
        return cls(_with_shares(table, signed_job(signed)), doc.get("metadata", {}), signed or None)

    @property
    def job(self) -> dict[str, Any]:
        """The job as the analyst signed it ({} for a result without its envelope)."""
        return signed_job(self.signed)

    def plot(self, path: Path | str | None = None) -> Any:
        """Draw the released table (matplotlib): bars for one `by` column, a heatmap for two,
        facets for three; suppressed cells hatched grey. With a path (.png or .svg) write it
        and return the path, else return the matplotlib Figure."""
        from jointstats.plot import draw, save

        return draw(self) if path is None else save(self, Path(path))

    @classmethod
    def verify_file(cls, path: Path, roster: Roster) -> Result:
        """Read a result saved as .json and verify its signatures against the roster."""
        try:
            data = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        try:
            result = cls.from_json(data, roster)
            readable = json.loads(data)
        except (ValueError, KeyError, TypeError):
            raise ResultError(f"{Path(path).name} is not a saved jointstats result") from None
        _check_readable_copy(Path(path).name, readable, result)
        return result

    def to_csv_text(self) -> str:
        frame = self.table.copy()
        frame["suppressed"] = frame["suppressed"].map({True: "true", False: "false"})
        return frame.to_csv(index=False, na_rep="")

    def write(self, path: Path) -> None:
        """Write CSV, JSON (table + metadata) or Parquet, by the file's suffix."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in ("", ".csv"):
            path.write_text(self.to_csv_text())
            meta_path(path).write_text(json.dumps(self.metadata, indent=2, ensure_ascii=False))
        elif suffix == ".json":
            rows = json.loads(self.table.to_json(orient="records"))
            doc = {"table": rows, "metadata": self.metadata, "signed": self.signed}
            path.write_text(json.dumps(doc, indent=2))
        elif suffix == ".parquet":
            self.table.to_parquet(path, index=False)
        else:
            raise ConfigError(unsupported_suffix(path))


def _check_readable_copy(name: str, saved: dict[str, Any], result: Result) -> None:
    """A saved .json also holds the table and metadata in plain form, which people and
    scripts read: they must say what the signed part says."""
    if "signed" not in saved:
        return  # the bare signed document: nothing else to compare
    table = json.loads(result.table.to_json(orient="records"))
    if saved.get("table") != table:
        raise ResultError(
            f"{name}: its readable `table` differs from the signed one; read the table from "
            "`signed` or fetch the result again"
        )
    if saved.get("metadata") != result.metadata:
        raise ResultError(f"{name}: its readable `metadata` differs from the signed one")


def meta_path(path: Path) -> Path:
    """The CSV's sidecar with the result's metadata: table.csv -> table.meta.json."""
    return Path(path).with_suffix(".meta.json")


def signed_job(signed: dict[str, Any] | None) -> dict[str, Any]:
    """The job inside a result's signed envelope; {} when there is none or it is unreadable."""
    if not signed or "envelope" not in signed:
        return {}
    try:
        job = json.loads(base64.b64decode(str(signed["envelope"])))["job"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        return {}
    return job if isinstance(job, dict) else {}


def _with_shares(table: pd.DataFrame, job: dict[str, Any]) -> pd.DataFrame:
    """Add `share` when the signed crosstab job asks for it (public post-processing)."""
    from jointstats.shares import MODES, add_shares

    mode = job.get("shares")
    if job.get("kind") != "crosstab" or mode not in MODES or "share" in table:
        return table
    by = [c for c in job.get("by", []) if c in table]
    margins = bool(job.get("disclosure", {}).get("margins", False))
    if len(by) != len(job.get("by", [])) or (mode != "total" and len(by) < 2):
        return table
    return add_shares(table, by, mode, margins)


def unsupported_suffix(path: Path) -> str:
    return f"cannot write {Path(path).name}: use .csv, .json or .parquet"


def check_output_path(path: Path) -> None:
    """Fail before any work when a result could not be written to `path`."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise ConfigError(unsupported_suffix(path))

"""Job documents: reading TOML/JSON files, canonical JSON, and dispatch to the protocol registry."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from jointstats.errors import JobError


def load_job_file(path: Path) -> dict[str, Any]:
    """Read a job document (TOML or JSON, same fields)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobError(f"cannot read job file {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise JobError(f"job file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(doc, dict):
        raise JobError(f"job file {path} must hold a table of fields")
    return doc


def canonical_json(doc: dict[str, Any]) -> bytes:
    """The byte form that is signed, hashed and sent: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_job_bytes(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JobError("job is not valid JSON") from None
    if not isinstance(doc, dict):
        raise JobError("job must be a JSON object")
    return doc

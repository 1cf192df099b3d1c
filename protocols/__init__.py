"""Protocol registry: one module per job kind, registered in REGISTRY below."""

from __future__ import annotations

from typing import Any

from jointstats.errors import JobError
from jointstats.protocols import crosstab, linked_crosstab
from jointstats.protocols.base import FederationView, JobProtocol, Plan, SessionContext

REGISTRY: dict[str, JobProtocol] = {
    crosstab.PROTOCOL.kind: crosstab.PROTOCOL,
    linked_crosstab.PROTOCOL.kind: linked_crosstab.PROTOCOL,
}


def protocol_for(doc: dict[str, Any]) -> JobProtocol:
    kind = doc.get("kind")
    if kind not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise JobError(f"unknown job kind {kind!r}; this federation runs: {known}")
    return REGISTRY[kind]


def parse_job(doc: dict[str, Any]) -> tuple[JobProtocol, Any]:
    protocol = protocol_for(doc)
    return protocol, protocol.parse(doc)


__all__ = ["REGISTRY", "FederationView", "JobProtocol", "Plan", "SessionContext", "parse_job"]

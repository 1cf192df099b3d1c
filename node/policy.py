"""The node's policy decision on a job offer: one place that says yes or no, with a reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jointstats.config import NodeConfig
from jointstats.errors import JointstatsError, RefusedError
from jointstats.jobs import parse_job_bytes
from jointstats.protocols import JobProtocol, parse_job


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str = ""
    protocol: JobProtocol | None = None
    job: Any = None


def decide(
    config: NodeConfig, job_json: bytes, parties: list[str], data_parties: list[str]
) -> Decision:
    """Check an offered job against this node's policy and datasets."""
    try:
        doc = parse_job_bytes(job_json)
        protocol, job = parse_job(doc)
        if protocol.kind not in config.policy.kinds:
            raise RefusedError(f"this node does not run {protocol.kind} jobs")
        if len(parties) < 3:
            raise RefusedError("MPC sessions need at least 3 parties")
        if config.name not in parties:
            raise RefusedError("this node is not a party of the offered session")
        used = protocol.columns_used(job, config.name) if config.name in data_parties else {}
        for dataset in used:
            if dataset not in config.datasets:
                raise RefusedError(f"this node does not serve dataset {dataset!r}")
    except JointstatsError as exc:
        return Decision(False, str(exc))
    return Decision(True, protocol=protocol, job=job)

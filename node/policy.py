"""Every policy decision of a node, in one place: the offer (`decide`), the coordinator's
session start (`check_session_start`), this node's own contribution (`check_contribution`)
and the released table (`check_release`). Each says yes or raises with a one-line reason.

Order: signature and expiry (roster), replay, job validity, then the node's policy: analyst,
kind, partners, datasets and columns, table size, min_cell floor (applied at session start),
differencing rules (require_epsilon, pool_with), differential-privacy budget (charged here,
before any computation; refunded by the server when the session never starts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jointstats.config import NodeConfig, Policy
from jointstats.errors import JointstatsError, RefusedError
from jointstats.keys import Roster
from jointstats.protocols import JobProtocol, parse_job
from jointstats.signing import Envelope, SignedJob, verify_job

from .state import NodeState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    accept: bool
    reason: str = ""
    envelope: Envelope | None = None
    protocol: JobProtocol | None = None
    job: Any = None
    analyst_fingerprint: str = ""
    columns: dict[str, list[str]] | None = None
    epsilon: float = 0.0


@dataclass(frozen=True)
class Offer:
    signed: SignedJob
    parties: list[str]
    data_parties: list[str]


def _check_policy(
    policy: Policy, node: str, fingerprint: str, kind: str, offer: Offer, columns: dict
) -> None:
    grant = policy.analysts.get(fingerprint)
    if grant is None:
        raise RefusedError(
            "the analyst's key is not allowed by this node's policy; send the analyst's signing "
            f"fingerprint {fingerprint} to the node's operator"
        )
    terms = policy.terms.get(fingerprint)
    if terms is not None and terms.expired():
        raise RefusedError(
            f"node {node}: the analyst's grant expired on {terms.expires} (policy expires)"
        )
    if kind not in policy.kinds:
        raise RefusedError(f"this node does not run {kind} jobs")
    strangers = [p for p in offer.parties if p != node and not policy.allows_partner(p)]
    if strangers:
        raise RefusedError(f"this node does not compute with {', '.join(strangers)}")
    for dataset, used in columns.items():
        allowed = grant.get(dataset, grant.get("*"))
        if allowed is None:
            raise RefusedError(f"the analyst may not use dataset {dataset}")
        denied = [c for c in used if "*" not in allowed and c not in allowed]
        if denied:
            granted = ", ".join(sorted(allowed)) or "none"
            raise RefusedError(
                f"the analyst may not use column(s) {', '.join(denied)} of {dataset}: not "
                f"granted, or not in the dataset (granted: {granted})"
            )


def _check_session(
    node: str, roster: Roster, protocol: JobProtocol, job: Any, offer: Offer, envelope: Envelope
) -> None:
    """The analyst signed the session's parties: the coordinator may not change them. Even a
    signed list must not stack parties (one member as several parties holds several shares),
    swap the inputs the job names, or bring in a non-input party that is not compute-only."""
    parties, inputs = offer.parties, offer.data_parties
    if (tuple(parties), tuple(inputs)) != (envelope.parties, envelope.data_parties):
        raise RefusedError("the session's parties differ from those the analyst signed")
    if node not in parties or len(parties) < 3:
        raise RefusedError("this node is not one of at least 3 parties of the session")
    if len(set(parties)) != len(parties) or len(set(inputs)) != len(inputs):
        raise RefusedError("the session lists a party twice")
    if not set(inputs) <= set(parties):
        raise RefusedError("the session's input nodes are not all parties")
    roles = {p: roster.members[p].role if p in roster.members else None for p in parties}
    strangers = [p for p, role in roles.items() if role not in ("node", "compute")]
    if strangers:
        raise RefusedError(f"{', '.join(strangers)} may not be an MPC party (not a roster node)")
    named_inputs, named_others = protocol.signed_parties(job)
    if named_inputs is not None and list(named_inputs) != list(inputs):
        raise RefusedError("the session's input nodes differ from the signed job's")
    unnamed = [
        p for p in parties if p not in inputs and p not in named_others and roles[p] != "compute"
    ]
    if unnamed:
        raise RefusedError(f"{', '.join(unnamed)} would join without data but is not compute-only")


def _check_differencing(
    policy: Policy, node: str, kind: str, offer: Offer, columns: dict, epsilon: float
) -> None:
    """Two jobs that differ only in their inputs (or filters, columns) give the difference
    of their exact tables: a node that wants more than per-table suppression requires
    differential privacy on its data, or pools only with a fixed set of inputs."""
    if not columns:  # no data of this node in the job
        return
    if not epsilon:
        required = list(columns) if policy.require_epsilon else []
        required += [
            d for d in columns if d in policy.require_epsilon_datasets and d not in required
        ]
        if required:
            raise RefusedError(
                f"node {node} requires `epsilon` in [disclosure] for jobs on dataset(s) "
                f"{', '.join(required)} (policy require_epsilon)"
            )
    if policy.pool_with and kind == "crosstab" and set(offer.data_parties) != set(policy.pool_with):
        raise RefusedError(
            f"node {node} pools data only with exactly {', '.join(sorted(policy.pool_with))} "
            "(policy pool_with)"
        )


def decide(config: NodeConfig, roster: Roster, state: NodeState, offer: Offer) -> Decision:
    """Check an offered job; charge its epsilon when accepted."""
    try:
        envelope = verify_job(offer.signed, roster)
        if not state.first_sight(envelope.job_id, envelope.nonce):
            raise RefusedError("replayed job: its id or nonce was seen before")
        protocol, job = parse_job(envelope.job)
        _check_session(config.name, roster, protocol, job, offer, envelope)
        columns = (
            protocol.columns_used(job, config.name) if config.name in offer.data_parties else {}
        )
        for dataset in columns:
            if dataset not in config.datasets:
                raise RefusedError(f"this node does not serve dataset {dataset!r}")
        fingerprint = roster.get(envelope.analyst).signing_fingerprint
        _check_policy(config.policy, config.name, fingerprint, protocol.kind, offer, columns)
        cells = getattr(job, "n_cells", 0)
        if cells > config.policy.max_cells:
            raise RefusedError(
                f"the table has {cells} cells; this node allows {config.policy.max_cells}"
            )
        epsilon = float(envelope.job.get("disclosure", {}).get("epsilon") or 0.0)
        _check_differencing(config.policy, config.name, protocol.kind, offer, columns, epsilon)
        if epsilon and columns:
            try:
                state.charge(
                    envelope.job_id, dict.fromkeys(columns, epsilon), config.policy.budgets
                )
            except ValueError as exc:
                raise RefusedError(str(exc)) from None
    except JointstatsError as exc:
        return Decision(False, str(exc))
    return Decision(True, "", envelope, protocol, job, fingerprint, columns, epsilon)


def check_session_start(
    config: NodeConfig, decision: Decision, offer: Offer, start: SessionStartView
) -> None:
    """The coordinator's session start must match the accepted offer, and its effective
    thresholds may only be at or above the signed job's and this node's floors. (Parties
    then compare their whole session description before any share: jointstats.session.)"""
    if (start.parties, start.data_parties) != (offer.parties, offer.data_parties):
        raise RefusedError("the session's parties differ from the offer's")
    signed = decision.protocol.disclosure(decision.job) if decision.protocol else None
    floor = max(config.policy.min_cell, signed.min_cell if signed else 0)
    if start.min_cell < floor:
        raise RefusedError("threshold below the signed job's or this node's floor")
    wanted = max(config.policy.protection, signed.protection if signed else 0)
    if start.protection < wanted:
        raise RefusedError("protection below the signed job's or this node's policy")


@dataclass(frozen=True)
class SessionStartView:
    """The parts of a coordinator's session start that policy checks."""

    parties: list[str]
    data_parties: list[str]
    min_cell: int
    protection: int


def check_release(config: NodeConfig, result: dict[str, Any], settings: dict[str, Any]) -> None:
    """Defence in depth: never report a table that shows a count below this node's own floor
    or the session's threshold (a released zero only when the job asked for it; a linked
    table's grand total is n, public anyway)."""
    floor = max(config.policy.min_cell, int(settings["min_cell"]))
    position = result["columns"].index("count")
    for row in result["rows"]:
        count = row[position]
        if row[-1] or count is None:
            continue
        public = count == result["metadata"].get("matched") and set(row[:position]) == {"total"}
        if count < floor and not (count == 0 and settings.get("release_zeros")) and not public:
            raise RefusedError(
                "the session produced a released cell below this node's threshold; "
                "the table is withheld"
            )


def check_contribution(node: str, job_id: str, max_rows: int, facts: dict[str, Any]) -> None:
    """This node's own data, before any of it is shared: at most `max_rows` rows per job. The
    exact figures are for the operator's log; the refusal that leaves the node has none."""
    if max_rows and facts.get("rows_used", 0) > max_rows:
        log.warning("job %s: %d rows, max_rows %d", job_id, facts["rows_used"], max_rows)
        raise RefusedError("the job would use more rows than this node's policy allows (max_rows)")


def needs_approval(policy: Policy, decision: Decision) -> bool:
    """Whether an accepted offer waits for the operator (`approval = "manual"`, narrowed to
    the listed datasets and analysts, by name or signing fingerprint, when lists are given)."""
    if policy.approval != "manual" or decision.envelope is None:
        return False
    if policy.approval_datasets and not set(decision.columns or {}) & set(policy.approval_datasets):
        return False
    analyst = {decision.envelope.analyst, decision.analyst_fingerprint}
    return not policy.approval_analysts or bool(analyst & set(policy.approval_analysts))


def recheck(
    config: NodeConfig, roster: Roster, offer: Offer, epsilon: float, now: float | None = None
) -> Decision:
    """A queued offer again, when the operator approves it or the node restarts: signature and
    expiry, the session, and this node's policy as it is now (an operator who tightened the
    policy meanwhile is obeyed). Replay and budget were settled when the offer arrived (its
    epsilon stays charged until it is refunded); raises RefusedError or AuthError."""
    envelope = verify_job(offer.signed, roster, now)
    protocol, job = parse_job(envelope.job)
    _check_session(config.name, roster, protocol, job, offer, envelope)
    columns = protocol.columns_used(job, config.name) if config.name in offer.data_parties else {}
    for dataset in columns:
        if dataset not in config.datasets:
            raise RefusedError(f"this node does not serve dataset {dataset!r}")
    fingerprint = roster.get(envelope.analyst).signing_fingerprint
    _check_policy(config.policy, config.name, fingerprint, protocol.kind, offer, columns)
    _check_differencing(config.policy, config.name, protocol.kind, offer, columns, epsilon)
    return Decision(True, "", envelope, protocol, job, fingerprint, columns, epsilon)

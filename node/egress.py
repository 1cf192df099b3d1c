"""A node's egress statement: before a job runs (and before its operator approves it), what
will leave this node and to whom, the released table's shape, the disclosure rule, the epsilon
charged and left, and what the partners learn. After the job, the audit log records what was
actually sent (node/relay_link.py counts it); `jointstats audit show` puts the two side by side.

The statement is for this node's operator only: it may hold this node's own row count (linked
jobs), which never leaves the node.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from jointstats.config import NodeConfig
from jointstats.errors import JointstatsError
from jointstats.protocols.base import Plan

from .policy import Decision
from .state import NodeState

log = logging.getLogger(__name__)
NEEDS_ROWS = ("linked_crosstab",)  # protocols whose egress grows with this node's records


def row_count(config: NodeConfig, decision: Decision) -> int | None:
    """This node's rows in the job's dataset (one count query, local), when the protocol's
    egress depends on it; None otherwise or when the count fails (the statement says so)."""
    from .sources import source_for

    if decision.protocol is None or decision.protocol.kind not in NEEDS_ROWS:
        return None
    for dataset in decision.columns or {}:
        try:
            return source_for(dataset, config.datasets[dataset]).summary().rows
        except (JointstatsError, KeyError) as exc:
            log.warning("egress statement: cannot count rows of %s: %s", dataset, exc)
    return None


def _disclosure_rule(config: NodeConfig, decision: Decision) -> str:
    assert decision.protocol is not None
    signed = decision.protocol.disclosure(decision.job)
    k = max(signed.min_cell, config.policy.min_cell)
    protection = max(signed.protection, config.policy.protection, k)
    zeros = "released" if signed.release_zeros else "suppressed like small cells"
    rule = (
        f"cells with a count below {k} are suppressed (the job's min_cell {signed.min_cell}, "
        f"this node's floor {config.policy.min_cell}; partners' floors may raise it); each "
        f"suppressed cell keeps at least {protection} possible values against the attacker's "
        f"linear programme (secondary suppression); zeros are {zeros}"
    )
    if signed.margins:
        rule += "; margins are released under the same rule"
    if signed.epsilon:
        rule += f"; discrete Laplace noise with epsilon {signed.epsilon:g} is added inside MPC"
    return rule


def statement(
    config: NodeConfig, state: NodeState, decision: Decision, plan: Plan, rows: int | None
) -> dict[str, Any]:
    """This node's egress statement for an accepted offer (JSON-ready)."""
    assert decision.protocol is not None and decision.envelope is not None
    egress = decision.protocol.egress(decision.job, config.name, plan, rows)
    budgets = {
        dataset: {
            "charged": decision.epsilon,
            "budget": config.policy.budgets.get(dataset, 0.0),
            "left": round(config.policy.budgets.get(dataset, 0.0) - state.spent(dataset), 12),
        }
        for dataset in (decision.columns or {})
        if decision.epsilon
    }
    return {
        "job_id": decision.envelope.job_id,
        "kind": decision.protocol.kind,
        "analyst": decision.envelope.analyst,
        "purpose": str(decision.envelope.job.get("purpose", "")),
        "datasets": decision.columns or {},
        "rows": rows,
        "outflows": [
            {**asdict(flow), "text": flow.text(), "payload_bytes": flow.payload_bytes}
            for flow in egress.outflows
        ],
        "table": egress.table,
        "disclosure": _disclosure_rule(config, decision),
        "epsilon": budgets,
        "leakage": egress.leakage,
    }


def render(doc: dict[str, Any]) -> list[str]:
    """The statement as lines for the operator (CLI, audit show)."""
    lines = [
        f"job {doc['job_id']} ({doc['kind']}) from {doc['analyst']}",
        f"purpose: {doc['purpose'] or '(none given)'}",
    ]
    for dataset, columns in doc.get("datasets", {}).items():
        lines.append(f"reads: {dataset} (columns {', '.join(columns)})")
    if doc.get("rows") is not None:
        lines.append(f"rows in your dataset: {doc['rows']:,} (counted here; stays here)")
    lines.append("leaves this node:")
    for flow in doc.get("outflows", []):
        size = flow.get("payload_bytes")
        where = f"[{flow['kind']}, phase {flow['phase']}"
        where += f", {'up to ' if flow.get('at_most') else ''}{size:,} bytes]" if size else "]"
        lines.append(f"  - {flow['text']} {where}")
    lines.append(f"released table: {doc['table']}")
    lines.append(f"disclosure: {doc['disclosure']}")
    for dataset, budget in doc.get("epsilon", {}).items():
        lines.append(
            f"epsilon: {budget['charged']:g} charged to {dataset}; {budget['left']:g} of "
            f"{budget['budget']:g} left"
        )
    if not doc.get("epsilon"):
        lines.append("epsilon: none (no differential privacy in this job)")
    lines.append(f"partners learn: {doc['leakage']}")
    return lines


def sent_lines(statement_doc: dict[str, Any] | None, sent: list[dict[str, Any]]) -> list[str]:
    """What was sent (from RESULT_RELEASED), per peer, kind and phase, beside the statement's
    prediction for the same peer, kind and phase where it made one."""
    predicted: dict[tuple[str, str, str], int] = {}
    for flow in (statement_doc or {}).get("outflows", []):
        if flow.get("payload_bytes") is None:
            continue
        for peer in flow["to"]:
            key = (peer, flow["kind"], flow["phase"])
            predicted[key] = predicted.get(key, 0) + int(flow["payload_bytes"])
    lines = []
    for row in sent:
        key = (row["to"], row["kind"], row["phase"])
        stated = f"; statement: {predicted[key]:,}" if key in predicted else ""
        lines.append(
            f"  {row['to']:<12} {row['kind']:<9} {row['phase']:<9} {row['messages']:>5} msgs "
            f"{row['bytes']:>12,} bytes (payload {row['payload_bytes']:,}{stated})"
        )
    return lines

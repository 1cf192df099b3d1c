"""`jointstats node rehearse`: run a job end to end on loopback, on invented data shaped like
this node's dataset, before the real federation ever sees it (DESIGN §5.5).

What is real: the job, its protocol, the processes, gRPC, TLS, the MPC session and the
disclosure control, as in `jointstats local` (jointstats.local.LocalFederation), with this
node's `min_cell` and `protection` floors. What is invented: every record. This node's dataset
contributes only its schema, column names and types: the declared `columns` of its
`[datasets.NAME]` table when there are any (the data is then not opened at all), otherwise the
engine's description of the table (DuckDB's DESCRIBE; for a CSV file DuckDB samples rows to
infer types, as `node check` does, and keeps nothing). The job's categories come from its
`[domains]`, sums from its `bounds`. The partners are local nodes with invented data too.

Output: the egress statement (when the protocol provides one), the transcript summary read
from the simulated nodes' own audit logs, and the released table.
"""

from __future__ import annotations

import datetime
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jointstats.audit import verify
from jointstats.config import NodeConfig
from jointstats.errors import ConfigError, DataError, JointstatsError
from jointstats.local import LocalFederation, LocalNode
from jointstats.protocols import parse_job
from jointstats.results import Result

MIN_PARTIES = 3
LINK_OVERLAP = 0.7  # share of the smaller side's synthetic keys that the other side holds


@dataclass
class Party:
    name: str
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> schema
    simulated: bool = True


@dataclass(frozen=True)
class TranscriptLine:
    party: str
    events: list[str]
    figures: dict[str, Any]  # facts and timings found in its audit log
    chain: str  # "intact (N entries)" or the verification failure
    sent: list[str] = field(default_factory=list)  # bytes per peer, kind and phase


@dataclass
class Rehearsal:
    job_id: str
    kind: str
    parties: list[str]
    egress: list[str]
    transcript: list[TranscriptLine]
    result: Result
    rows: dict[str, int]  # synthetic rows per data party


def dataset_schema(config: NodeConfig, dataset: str) -> dict[str, str]:
    """Column -> kind of this node's dataset, from its declared `columns`, else the engine's
    description of the table. Never a value."""
    from jointstats.node.sources import source_for

    entry = config.datasets.get(dataset)
    if entry is None:
        raise ConfigError(f"node {config.name} does not serve dataset {dataset!r}")
    declared = entry.get("columns") if isinstance(entry, dict) else None
    if isinstance(declared, dict) and declared:
        return {str(c): str(k) for c, k in declared.items()}
    return source_for(dataset, entry).column_types()


def _value_columns(protocol_kind: str, job: Any, node: str) -> dict[str, str]:
    """Columns the job uses on `node` that are not categories: sums and weights are numbers,
    linkage keys text."""
    if protocol_kind == "crosstab":
        return {c: "number" for c in (job.sum, job.weight) if c}
    side = job.left if node == job.left.node else job.right
    columns = {side.key: "key"}
    if side.weight:
        columns[side.weight] = "weight"
    return columns


def _parties(config: NodeConfig, protocol_kind: str, job: Any) -> list[Party]:
    """The session's parties: this node, the job's other nodes (simulated), and compute-only
    nodes up to three parties, as the coordinator would add them."""
    me = config.name
    if protocol_kind == "crosstab":
        inputs = list(job.inputs) if job.inputs else [me, "partner-1"]
        parties = [Party(n, {job.dataset: {}}, n != me) for n in inputs]
    else:
        parties = [
            Party(job.left.node, {job.left.dataset: {}}, job.left.node != me),
            Party(job.right.node, {job.right.dataset: {}}, job.right.node != me),
            Party(job.helper, {}, job.helper != me),
        ]
    reserved = {"coordinator", "analyst"} & {p.name for p in parties}
    if reserved:
        raise ConfigError(f"rehearse: the job names {reserved.pop()}, a name rehearsal reserves")
    extra = 1
    while len(parties) < MIN_PARTIES:
        parties.append(Party(f"compute-{extra}"))
        extra += 1
    for party in parties:
        if not party.simulated:
            for dataset in party.datasets:
                party.datasets[dataset] = dataset_schema(config, dataset)
    return parties


def _skewed(rng: np.random.Generator, categories: list[str], rows: int) -> np.ndarray:
    """Categories with falling frequencies, so that a rehearsal shows suppressed cells too."""
    weights = np.array([1 / (i + 1) ** 1.6 for i in range(len(categories))])
    return rng.choice(np.array(categories, dtype=object), rows, p=weights / weights.sum())


def _filler(kind: str, rng: np.random.Generator, rows: int) -> Any:
    if kind == "number":
        return rng.integers(0, 1000, rows)
    if kind == "date":
        start = datetime.date(2024, 1, 1)
        return [start + datetime.timedelta(days=int(d)) for d in rng.integers(0, 365, rows)]
    if kind == "boolean":
        return rng.integers(0, 2, rows).astype(bool)
    return np.array([f"x{i}" for i in rng.integers(0, 50, rows)], dtype=object)


def synthetic_frame(
    schema: dict[str, str],
    categories: dict[str, list[str]],
    values: dict[str, str],
    rows: int,
    rng: np.random.Generator,
    bounds: tuple[float, float] | None = None,
    keys: list[str] | None = None,
) -> pd.DataFrame:
    """Invented records: the schema's columns (or, without one, the job's), categories from
    the job's domains, numbers within the job's bounds, linkage keys from `keys`."""
    columns = dict(schema) or {c: "text" for c in [*categories, *values]}
    for column in [*categories, *values]:
        columns.setdefault(column, "text")
    data: dict[str, Any] = {}
    for column, kind in columns.items():
        if column in categories:
            data[column] = _skewed(rng, categories[column], rows)
        elif values.get(column) == "key":
            data[column] = np.array(keys if keys is not None else [], dtype=object)
        elif values.get(column) == "weight":
            data[column] = np.round(rng.uniform(0.5, 3.0, rows), 3)
        elif values.get(column) == "number":
            low, high = bounds if bounds else (0.0, 1000.0)
            data[column] = np.round(rng.uniform(low, high * 1.1, rows), 2)
        else:
            data[column] = _filler(kind, rng, rows)
    return pd.DataFrame(data)


def _link_keys(rows: int, side: int) -> list[str]:
    """Left keys P0..P(rows-1); the right side shares LINK_OVERLAP of them."""
    start = 0 if side == 0 else int(rows * (1 - LINK_OVERLAP))
    return [f"P{i:07d}" for i in range(start, start + rows)]


def _write_data(
    kind: str, job: Any, parties: list[Party], rows: int, seed: int, root: Path
) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for index, party in enumerate(parties):
        for dataset, schema in party.datasets.items():
            if kind == "crosstab":
                categories = {c: list(job.domains[c]) for c in job.by}
                bounds, keys = job.bounds, None
                n = rows if not party.simulated else max(rows // (index + 1), 50)
            else:
                side = job.left if party.name == job.left.node else job.right
                categories = {c: list(job.domains[c]) for c in side.by}
                bounds, n = None, rows
                keys = _link_keys(rows, 0 if side is job.left else 1)
            values = _value_columns(kind, job, party.name)
            frame = synthetic_frame(schema, categories, values, n, rng, bounds, keys)
            folder = root / "data" / party.name
            folder.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(folder / f"{dataset}.parquet", index=False)
            counts[party.name] = n
    return counts


def _sent(sent: Any, predicted: dict[str, Any] | None) -> list[str]:
    """Bytes sent per peer, message kind and phase, as the party's audit log records them."""
    if not isinstance(sent, list):
        return []
    try:
        from jointstats.node.egress import sent_lines
    except ImportError:
        return [json.dumps(row) for row in sent]
    return [line.strip() for line in sent_lines(predicted, sent)]


def _figures(fields: dict[str, Any]) -> dict[str, Any]:
    """The numbers of an audit entry (rows used, matched, epsilon) and the bytes sent."""
    kept = {k: v for k, v in fields.items() if type(v) in (int, float)}
    if isinstance(fields.get("sent"), list):
        kept["sent"] = fields["sent"]
    return kept


def transcript(
    federation: LocalFederation,
    job_id: str,
    parties: list[str],
    predicted: dict[str, Any] | None = None,
    me: str = "",
) -> list[TranscriptLine]:
    """Each simulated party's audit log, verified, reduced to this job's events and figures."""
    lines = []
    for name in parties:
        path = federation.workdir / name / "audit.jsonl"
        report = verify(path)
        chain = f"intact ({report.entries} entries)" if report.ok else f"BROKEN: {report.reason}"
        events: list[str] = []
        figures: dict[str, Any] = {}
        if path.exists():
            for raw in path.read_text().splitlines():
                entry = json.loads(raw)
                if entry.get("job_id") != job_id:
                    continue
                events.append(entry["event"])
                figures.update(_figures(entry.get("fields", {})))
        sent = figures.pop("sent", None)
        lines.append(
            TranscriptLine(
                name, events, figures, chain, _sent(sent, predicted if name == me else None)
            )
        )
    return lines


def egress_lines(
    protocol: Any, job: Any, node: str, parties: list[str], inputs: list[str], rows: int | None
) -> tuple[list[str], dict[str, Any] | None]:
    """The protocol's egress statement for this node (lines, and the outflows as the audit
    comparison wants them), or a placeholder when this version's protocols state none."""
    egress: Callable[..., Any] | None = getattr(protocol, "egress", None)
    if egress is None:
        return ["(this version's protocols do not state egress yet: see the transcript)"], None
    from dataclasses import asdict

    from jointstats.protocols.base import Plan

    statement = egress(job, node, Plan(tuple(parties), tuple(inputs)), rows)
    lines = ["leaves this node:"]
    outflows = []
    for flow in statement.outflows:
        size = flow.payload_bytes
        where = f"[{flow.kind}, phase {flow.phase}"
        where += f", {'up to ' if flow.at_most else ''}{size:,} bytes]" if size else "]"
        lines.append(f"  - {flow.text()} {where}")
        outflows.append({**asdict(flow), "payload_bytes": size})
    lines.append(f"released table: {statement.table}")
    lines.append(f"partners learn: {statement.leakage}")
    return lines, {"outflows": outflows}


def rehearse(
    config: NodeConfig,
    doc: dict[str, Any],
    rows: int = 2000,
    seed: int = 1,
    workdir: Path | None = None,
    timeout: float = 300.0,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> Rehearsal:
    """Run `doc` on invented data shaped like this node's; raise JointstatsError on failure."""
    if rows < 1:
        raise ConfigError("rehearse: --rows must be at least 1")
    protocol, job = parse_job(doc)
    parties = _parties(config, protocol.kind, job)
    root = (
        Path(workdir).resolve()
        if workdir
        else Path(tempfile.mkdtemp(prefix="jointstats-rehearse-"))
    )
    try:
        return _run(config, doc, protocol, job, parties, root, rows, seed, timeout, on_phase)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _run(
    config: NodeConfig,
    doc: dict[str, Any],
    protocol: Any,
    job: Any,
    parties: list[Party],
    root: Path,
    rows: int,
    seed: int,
    timeout: float,
    on_phase: Callable[[str], None],
) -> Rehearsal:
    counts = _write_data(protocol.kind, job, parties, rows, seed, root)
    floors = {"min_cell": config.policy.min_cell, "protection": config.policy.protection}
    nodes = [
        LocalNode(
            p.name,
            {d: root / "data" / p.name / f"{d}.parquet" for d in p.datasets},
            policy=floors if not p.simulated else {},
        )
        for p in parties
    ]
    names = [p.name for p in parties]
    inputs = [p.name for p in parties if p.datasets]
    mine = counts.get(config.name)
    egress, predicted = egress_lines(protocol, job, config.name, names, inputs, mine)
    on_phase("starting a coordinator and the simulated nodes on loopback")
    with LocalFederation(nodes, root / "federation", session_timeout=timeout) as federation:
        assert federation.client is not None
        on_phase("running the job on invented data")
        job_id = federation.client.submit(doc)
        try:
            result = federation.client.wait(job_id, timeout)
        except JointstatsError as exc:
            raise DataError(f"rehearsal failed: {exc}") from None
        lines = transcript(federation, job_id, names, predicted, config.name)
    return Rehearsal(job_id, protocol.kind, names, egress, lines, result, counts)


def figure_text(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float) and not math.isfinite(value):
            continue
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        parts.append(f"{key}={text}")
    return ", ".join(parts)

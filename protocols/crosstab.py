"""Pooled cross-tabulation over nodes that hold datasets of the same shape (DESIGN §5.1).

Inputs: each input node's dataset named by the job; the job's `by` columns with declared
domains (the table's shape is public; a column binned by [bins] has its bands as domain),
optionally [where] filters, a `sum` column with `bounds` and a survey `weight` column
(non-negative, finite).
Output: one row per cell of the product of the domains, in domain order: the `by` values,
`count` (then `weighted_count`, the sum of weights; `sum`, `mean`), `suppressed`.

Steps:
1. Each input node runs one GROUP BY in its engine (filters and bands included: protocols/
   filters.py, node/sources.py) and maps the groups onto the declared cells; values outside a
   domain or every band are an error (a count per column, never the values), or map to
   "other" when the job sets `other = true` in [domains].
2. The cell vectors (counts, then sums and weights in fixed point) are secret-shared (Shamir,
   MPyC SecInt(64)) into one session of m >= 3 parties (compute-only nodes fill up) and added.
3. Primary suppression inside MPC: b = [count >= k] (or count == 0 with `release_zeros`), b is
   opened, then only the released cells' measures are opened. Suppression is decided on the
   unweighted counts.

Threat model: semi-honest, honest majority, t = (m-1)//2 colluding parties.
Leakage: nothing beyond the released table (including which cells are suppressed) and each
node's knowledge of its own data. The coordinator sees only ciphertext sizes and timing.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jointstats.errors import DataError, JobError
from jointstats.protocols import disclosure
from jointstats.protocols.base import (
    MIN_PARTIES,
    Egress,
    FederationView,
    Outflow,
    Plan,
    SessionContext,
)
from jointstats.protocols.filters import Bands, Condition, names, parse_bins, parse_where
from jointstats.protocols.release import Disclosure, WithDisclosure, parse_disclosure, release

if TYPE_CHECKING:  # numpy is imported where it is used: node and coordinator never load it
    import numpy as np

MAX_CELLS = 20_000  # a released table travels in one gRPC message (4 MiB)
SUM_SCALE = 100  # sums travel as integers in hundredths
WEIGHT_SCALE = 1_000_000  # weights travel as integers in millionths (as in linked_crosstab)
MAX_FIXED = float(1 << 58)  # per node and cell, so that the sum over nodes stays in SecInt(64)
MAX_SCALED_WEIGHT = 1 << 62  # a node's scaled weight total; keeps the sum inside SecInt(64)
OTHER = "other"
FIELDS = {
    "kind", "dataset", "inputs", "by", "sum", "bounds", "weight", "domains", "disclosure",
    "purpose", "shares", "where", "bins",
}  # fmt: skip
MAX_PURPOSE = 500  # characters of the signed `purpose` shown to approving operators
TOTAL = "total"
VERSION = 3  # bumped when the session's messages or the release rule change (3: where, bins)


@dataclass(frozen=True)
class CrosstabJob(WithDisclosure):
    dataset: str
    by: tuple[str, ...]
    domains: dict[str, tuple[str, ...]]
    inputs: tuple[str, ...] | None = None
    sum: str | None = None
    bounds: tuple[float, float] | None = None
    other: bool = False
    weight: str | None = None
    disclosure: Disclosure = Disclosure()
    where: tuple[Condition, ...] = ()
    bins: dict[str, Bands] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(d) for d in self.cell_domains)

    @property
    def measures(self) -> list[str]:
        """What the cell vector carries, in order: always counts, then sums, weights."""
        return ["count"] + (["sum"] if self.sum else []) + (["weight"] if self.weight else [])

    @property
    def cell_domains(self) -> list[tuple[str, ...]]:
        """Per `by` column, its categories as the table shows them (with "other" if asked)."""
        extra = (OTHER,) if self.other else ()
        return [self.domains[c] + extra for c in self.by]

    @property
    def n_cells(self) -> int:
        return math.prod(len(d) for d in self.cell_domains)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise JobError(message)


def _string_list(value: Any, name: str) -> tuple[str, ...]:
    _require(
        isinstance(value, list) and value and all(isinstance(v, str) and v for v in value),
        f"`{name}` must be a non-empty list of names",
    )
    return tuple(value)


def _parse_domains(
    doc: dict[str, Any], by: tuple[str, ...], bins: dict[str, Bands] | None = None
) -> tuple[dict, bool]:
    """Each `by` column's domain: declared in [domains], or a binned column's band labels.
    An entry that names no `by` column is an error (a typo must not pass unnoticed)."""
    bins = bins or {}
    raw = doc.get("domains", {} if set(by) <= set(bins) else None)
    _require(isinstance(raw, dict), "the job needs a [domains] table declaring each `by` column")
    other = raw.get("other", False)
    _require(isinstance(other, bool), "`other` in [domains] must be true or false")
    unused = sorted(c for c in raw if c != "other" and (c not in by or c in bins))
    _require(
        not unused,
        f"[domains] entries for no `by` column (binned columns take their bands): {names(unused)}",
    )
    domains: dict[str, tuple[str, ...]] = {}
    for column in by:
        if column in bins:
            domains[column] = bins[column].labels
            _require(
                not (other and OTHER in domains[column]), f"bands of `{column}` include {OTHER!r}"
            )
            continue
        values = raw.get(column)
        _require(
            isinstance(values, list) and values and all(isinstance(v, (str, int)) for v in values),
            f"declare the categories of `{column}` in [domains] as a non-empty list",
        )
        labels = tuple(str(v) for v in values)
        _require(len(set(labels)) == len(labels), f"domain of `{column}` lists a value twice")
        _require(not (other and OTHER in labels), f"domain of `{column}` already has {OTHER!r}")
        domains[column] = labels
    return domains, other


def check_purpose(doc: dict[str, Any]) -> None:
    """`purpose`: optional free text, signed with the job and shown to approving operators."""
    purpose = doc.get("purpose", "")
    _require(
        isinstance(purpose, str) and len(purpose) <= MAX_PURPOSE,
        f"`purpose` must be text of at most {MAX_PURPOSE} characters",
    )


def _check_shares(shares: Any, by: tuple[str, ...]) -> None:
    """`shares`: computed by the analyst's client from the released table (jointstats.shares)."""
    _require(
        shares is None or shares in ("row", "column", "total"),
        '`shares` must be "row", "column" or "total"',
    )
    _require(
        shares in (None, "total") or len(by) >= 2,
        f'`shares = "{shares}"` needs at least two `by` columns; use "total"',
    )


def share_bytes(bits: int) -> int:
    """Bytes of one Shamir share of an MPyC SecInt(bits) on the wire (--mix32-64bit): MPyC 0.11
    puts SecInt(l) in a prime field of l + 32 bits (its security parameter 30, plus 2)."""
    return (bits + 32 + 7) // 8


def _parse_sum(doc: dict[str, Any]) -> tuple[str | None, tuple[float, float] | None]:
    column = doc.get("sum")
    if column is None:
        _require("bounds" not in doc, "`bounds` goes with `sum`")
        return None, None
    _require(isinstance(column, str) and column, "`sum` must name one column")
    bounds = doc.get("bounds")
    _require(
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
        and bounds[0] < bounds[1],
        "`sum` needs `bounds = [low, high]` with finite low < high (values are clipped to them)",
    )
    return column, (float(bounds[0]), float(bounds[1]))


class Crosstab:
    kind = "crosstab"
    version = VERSION

    def parse(self, doc: dict[str, Any]) -> CrosstabJob:
        unknown = set(doc) - FIELDS
        _require(not unknown, f"unknown field(s) in crosstab job: {', '.join(sorted(unknown))}")
        check_purpose(doc)
        dataset = doc.get("dataset")
        _require(isinstance(dataset, str) and dataset, "`dataset` must name the dataset")
        by = _string_list(doc.get("by"), "by")
        _require(len(set(by)) == len(by), "`by` names a column twice")
        inputs = _string_list(doc["inputs"], "inputs") if "inputs" in doc else None
        where, bins = parse_where(doc), parse_bins(doc, by)
        domains, other = _parse_domains(doc, by, bins)
        sum_column, bounds = _parse_sum(doc)
        _require(sum_column not in by, "`sum` cannot also be a `by` column")
        _check_shares(doc.get("shares"), by)
        disclosure = parse_disclosure(doc)
        margins, epsilon = disclosure.margins, disclosure.epsilon
        weight = doc.get("weight")
        _require(weight is None or (isinstance(weight, str) and weight), "`weight`: one column")
        _require(weight not in by, "`weight` cannot also be a `by` column")
        _require(not (epsilon and sum_column), "`epsilon` with `sum` is not supported yet")
        _require(not (epsilon and weight), "`epsilon` with `weight` is not supported yet")
        _require(not margins or len(by) <= 2, "`margins` needs one or two `by` columns")
        _require(
            not margins or all(TOTAL not in domains[c] for c in by),
            f"with `margins`, no domain may contain {TOTAL!r}",
        )
        job = CrosstabJob(
            dataset, by, domains, inputs, sum_column, bounds, other, weight, disclosure, where, bins
        )
        _require(
            job.n_cells <= MAX_CELLS, f"the table has {job.n_cells} cells; at most {MAX_CELLS}"
        )
        return job

    def plan(self, job: CrosstabJob, view: FederationView) -> Plan:
        if job.inputs is None:
            inputs = sorted(n for n in view.online if job.dataset in view.datasets.get(n, ()))
            _require(bool(inputs), f"no connected node exposes dataset {job.dataset!r}")
        else:
            inputs = list(job.inputs)
            for name in inputs:
                _require(name in view.roles, f"unknown node {name!r}: it is not in the roster")
                _require(name in view.online, f"node {name!r} is not connected")
                _require(
                    job.dataset in view.datasets.get(name, ()),
                    f"node {name!r} does not expose dataset {job.dataset!r}",
                )
            _require(len(set(inputs)) == len(inputs), "`inputs` names a node twice")
        helpers = [n for n in view.compute_nodes() if n not in inputs]
        needed = max(0, MIN_PARTIES - len(inputs))
        _require(
            len(helpers) >= needed,
            f"an MPC session needs at least {MIN_PARTIES} parties; the job has {len(inputs)} "
            f"input node(s) and {len(helpers)} connected compute-only node(s)",
        )
        return Plan(tuple(inputs) + tuple(helpers[:needed]), tuple(inputs))

    def columns_used(self, job: CrosstabJob, node: str) -> dict[str, list[str]]:
        """Every column the node's query reads: `by`, `sum`, `weight` and the [where] columns."""
        named = [*job.by, *(c for c in (job.sum, job.weight) if c), *(w.column for w in job.where)]
        return {job.dataset: list(dict.fromkeys(named))}

    def disclosure(self, job: CrosstabJob) -> Disclosure:
        return job.disclosure

    def signed_parties(self, job: CrosstabJob) -> tuple[tuple[str, ...] | None, set[str]]:
        """The input nodes the signed job names (if any); no other party is named."""
        return job.inputs, set()

    def local_step(self, job: CrosstabJob, node: str, sources: dict[str, Any]) -> np.ndarray:
        """Cell vector of this node: counts, then sums in hundredths (with `sum`), then weights
        in millionths (with `weight`)."""
        import numpy as np

        if job.dataset not in sources:
            raise DataError(f"node {node} does not serve dataset {job.dataset!r}")
        source = sources[job.dataset]
        grouped = source.grouped(list(job.by), job.sum, job.bounds, job.weight, job.where, job.bins)
        _check_measures(job, grouped)
        cells = _cell_indices(job, grouped.keys, grouped.counts, job.dataset)
        parts = [_scatter(job, cells, np.asarray(grouped.counts, dtype=np.int64))]
        if job.sum:
            parts.append(_scatter(job, cells, _fixed(grouped.sums, SUM_SCALE)))
        if job.weight:
            weights = _fixed(grouped.weights, WEIGHT_SCALE)
            if int(weights.sum()) >= MAX_SCALED_WEIGHT:
                raise DataError(
                    f"dataset {job.dataset}, column {job.weight}: the weights' total is too large"
                )
            parts.append(_scatter(job, cells, weights))
        return np.concatenate(parts)

    def local_facts(self, job: CrosstabJob, local: np.ndarray) -> dict[str, Any]:
        """What this node's audit log records about its own contribution."""
        return {"rows_used": int(local[: job.n_cells].sum())}

    def egress(self, job: CrosstabJob, node: str, plan: Plan, rows: int | None) -> Egress:
        return egress(job, node, plan)

    async def mpc_program(
        self, job: CrosstabJob, ctx: SessionContext, local: np.ndarray | None
    ) -> dict[str, Any]:
        import numpy as np

        mpc = ctx.runtime
        # Counts are compared with k: 32-bit shares make that cheap. DP noise needs 40-bit
        # uniforms, and sums and weights can exceed 2^31: those use 64 bits.
        count_type = mpc.SecInt(64 if job.epsilon else 32)
        value_type = mpc.SecInt(64)
        n = job.n_cells
        ctx.progress("input")
        senders = [ctx.pid_of(name) for name in _inputs(job, ctx)]
        mine = local if local is not None else np.zeros(n * len(job.measures), dtype=np.int64)
        measures = {"count": _shared_sum(mpc, count_type, mine[:n], senders)}
        others = [m for m in job.measures if m != "count"]
        if others:
            totals = _shared_sum(mpc, value_type, mine[n:], senders)
            measures |= {m: totals[i * n : (i + 1) * n] for i, m in enumerate(others)}
        # every input is in (so this party's shares are sent): what follows is the release
        await mpc.gather([m[0] for m in measures.values()])
        ctx.progress("release")
        if job.epsilon:
            noise = disclosure.discrete_laplace_noise(mpc, count_type, n, job.epsilon)
            measures["count"] = [c + z for c, z in zip(measures["count"], noise, strict=True)]
        shape = job.shape if job.margins else (job.n_cells,)
        outcome = await release(mpc, measures, shape, ctx.disclosure)
        labels = _labels(job)
        rows = [_row(job, *entry) for entry in zip(labels, outcome.values, strict=True)]
        return {"columns": _columns(job), "rows": rows, "metadata": _metadata(job, ctx, outcome)}


def egress(job: CrosstabJob, node: str, plan: Plan) -> Egress:
    """Crosstab's egress for `node`: its input shares (one message per measure type and
    partner), then the release step's MPC messages (not predicted: recorded after the job)."""
    others = tuple(p for p in plan.parties if p != node)
    flows = []
    if node in plan.data_parties:
        bits = 64 if job.epsilon else 32
        flows.append(
            Outflow(others, "MPC", "input", "Shamir shares of cell counts", job.n_cells,
                    share_bytes(bits), 1)
        )  # fmt: skip
        if len(job.measures) > 1:
            what = "Shamir shares of cell " + " and ".join(
                {"sum": "sums", "weight": "weights"}[m] for m in job.measures[1:]
            )
            values = job.n_cells * (len(job.measures) - 1)
            flows.append(Outflow(others, "MPC", "input", what, values, share_bytes(64), 1))
    noise = "noise shares, " if job.epsilon else ""
    flows.append(
        Outflow(
            others, "MPC", "release",
            f"release-step MPC messages ({noise}comparison with the threshold, openings of the "
            "suppression flags and released cells; each a random-looking share)",
        )
    )  # fmt: skip
    shape = " x ".join(str(d) for d in job.shape)
    margins = " plus margins" if job.margins else ""
    table = f"{shape} = {job.n_cells} cells{margins} ({', '.join(job.measures)})"
    leakage = (
        "partners learn nothing beyond the released table (including which cells are "
        "suppressed); the coordinator sees only message sizes and timing"
    )
    return Egress(tuple(flows), table, leakage)


def _shared_sum(mpc: Any, sectype: type, mine: np.ndarray, senders: list[int]) -> list[Any]:
    """Every sender's vector secret-shared, then added element-wise."""
    shared = mpc.input([sectype(int(v)) for v in mine], senders=senders)
    return [mpc.sum(list(column)) for column in zip(*shared, strict=True)]


def _check_measures(job: CrosstabJob, grouped: Any) -> None:
    """Sums need numbers; weights need non-negative finite numbers. The message that leaves
    the node names the problem, never values or counts; the counts go to the node's log."""
    log = logging.getLogger(__name__)
    if grouped.value_nulls or grouped.value_non_numeric:
        log.warning(
            "dataset %s, column %s: %d empty and %d non-numeric values",
            job.dataset, job.sum, grouped.value_nulls, grouped.value_non_numeric,
        )  # fmt: skip
        kinds = ["empty"] if grouped.value_nulls else []
        kinds += ["non-numeric"] if grouped.value_non_numeric else []
        raise DataError(
            f"dataset {job.dataset}, column {job.sum}: {' and '.join(kinds)} values; "
            "clean them or choose another column"
        )
    if grouped.weight_bad:
        log.warning(
            "dataset %s, column %s: %d bad weights", job.dataset, job.weight, grouped.weight_bad
        )
        raise DataError(
            f"dataset {job.dataset}, column {job.weight}: weights that are empty, not a number, "
            "negative or infinite; weights must be finite and >= 0"
        )


def _fixed(values: list[float] | None, scale: int) -> np.ndarray:
    import numpy as np

    scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
    if scaled.size and not np.abs(scaled).max() < MAX_FIXED:
        raise DataError("a cell's sum is too large to aggregate exactly; narrow `bounds`")
    return scaled.astype(np.int64)


def _scatter(job: CrosstabJob, cells: np.ndarray, values: np.ndarray) -> np.ndarray:
    import numpy as np

    out = np.zeros(job.n_cells, dtype=np.int64)
    np.add.at(out, cells, values)
    return out


def _labels(job: CrosstabJob) -> list[tuple[str, ...]]:
    """Labels of the released lines in release order: cells, row totals, column totals, total."""
    domains = job.cell_domains
    labels = list(itertools.product(*domains))
    if not job.margins:
        return labels
    if len(domains) == 2:
        labels += [(r, TOTAL) for r in domains[0]] + [(TOTAL, c) for c in domains[1]]
    return [*labels, (TOTAL,) * len(domains)]


def _columns(job: CrosstabJob) -> list[str]:
    weighted = ["weighted_count"] if job.weight else []
    return [*job.by, "count", *weighted, *(["sum", "mean"] if job.sum else []), "suppressed"]


def _row(job: CrosstabJob, labels: tuple[str, ...], values: dict[str, int] | None) -> list[Any]:
    """The released line; a suppressed one (values None) has empty measures."""
    count = values["count"] if values else None
    row: list[Any] = [*labels, count]
    if job.weight:
        row.append(values["weight"] / WEIGHT_SCALE if values else None)
    if job.sum:
        amount = values["sum"] / SUM_SCALE if values else None
        row += [amount, amount / count if amount is not None and count else None]
    return [*row, values is None]


def _metadata(job: CrosstabJob, ctx: SessionContext, outcome: Any) -> dict[str, Any]:
    return {
        "kind": "crosstab",
        "inputs": _inputs(job, ctx),
        "parties": list(ctx.parties),
        "disclosure": {
            **ctx.disclosure,
            "noise": "discrete Laplace, scale 1/epsilon, inside MPC" if job.epsilon else None,
        },
        "epsilon_spent": job.epsilon,
        "cells": job.n_cells,
        "suppressed_cells": sum(outcome.suppressed[: job.n_cells]),
        "secondary_suppressed": outcome.secondary_cells,
        "narrowest_interval": outcome.narrowest_interval,
    }


def _inputs(job: CrosstabJob, ctx: SessionContext) -> list[str]:
    if job.inputs is not None and list(job.inputs) != list(ctx.data_parties):
        raise JobError("the session's input nodes differ from the job's `inputs`")
    return list(ctx.data_parties)


def _cell_indices(
    job: CrosstabJob, keys: list[tuple[str | None, ...]], counts: list[int], dataset: str
) -> np.ndarray:
    """Cell of each group; empty (NULL) keys and values outside a domain are counted per
    column for the node's log and reported without the values or the counts."""
    import numpy as np

    index_maps = [{v: i for i, v in enumerate(d)} for d in job.cell_domains]
    outside, empty = [0] * len(job.by), [0] * len(job.by)
    cells = np.zeros(len(keys), dtype=np.int64)
    for row, (key, n) in enumerate(zip(keys, counts, strict=True)):
        cell = 0
        for col, (value, index_map) in enumerate(zip(key, index_maps, strict=True)):
            index = index_map.get(value) if value is not None else None
            if index is None and value is None:
                empty[col] += n
            elif index is None and job.other:
                index = index_map[OTHER]
            elif index is None:
                outside[col] += n
            cell = cell * len(index_map) + (index or 0)
        cells[row] = cell
    problems = [_problem(*p) for p in zip(job.by, empty, outside, strict=True) if p[1] or p[2]]
    if problems:
        for column, n_empty, n_outside in zip(job.by, empty, outside, strict=True):
            if n_empty or n_outside:
                logging.getLogger(__name__).warning(
                    "dataset %s, column %s: %d empty values, %d values outside the domain",
                    dataset, column, n_empty, n_outside,
                )  # fmt: skip
        hint = (
            "declare them in [domains] (or widen [bins]) or set `other = true`; "
            "fill or drop empty values"
        )
        raise DataError(f"dataset {dataset}: {'; '.join(problems)} ({hint})")
    return cells


def _problem(column: str, empty: int, outside: int) -> str:
    """What is wrong with a column, without the counts (they are the node's exact counts)."""
    parts = ["empty values"] if empty else []
    parts += ["values outside the declared domain"] if outside else []
    return f"column {column}: {' and '.join(parts)}"


PROTOCOL = Crosstab()

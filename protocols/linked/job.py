"""The linked crosstab job: schema, validation and the session plan.

Filters and bands (protocols/filters.py) run at each side, in that side's engine: a top-level
`[where]` or `[bins]` entry applies at the side whose `by`, `key`, linkage fields or `weight`
name its column (bins: a `by` column only); a filter on a column that no part of the job names
goes in that side's own table, `[left.where]` or `[right.where]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from jointstats.errors import JobError
from jointstats.protocols.base import FederationView, Plan
from jointstats.protocols.crosstab import (
    MAX_CELLS,
    OTHER,
    TOTAL,
    _parse_domains,
    _require,
    _string_list,
)
from jointstats.protocols.filters import (
    Bands,
    Condition,
    names,
    parse_bins,
    parse_where,
    shown,
)
from jointstats.protocols.release import Disclosure, WithDisclosure, parse_disclosure

KIND = "linked_crosstab"
FIELDS = {"kind", "helper", "left", "right", "domains", "disclosure", "linkage", "where", "bins"}
SIDE_FIELDS = {"node", "dataset", "key", "by", "normalize", "duplicates", "weight", "where"}
VERSION = 5  # bumped when the session's messages or what a party sees change (4: where, bins;
# 5: fuzzy blocking tokens and encodings that H sees, residual assignment)
METHODS = ("exact", "fuzzy")
LINKAGE_FIELDS = {"method", "fields", "threshold"}
FIELD_KINDS = ("name", "text", "date", "exact")
FIELD_KEYS = {"left", "right", "kind", "left_format", "right_format"}
ISO_DATE = "%Y-%m-%d"
DEFAULT_THRESHOLD = 0.9  # minimum match probability of a linked pair (fuzzy linkage)
MAX_LINK_FIELDS = 10
NORMALIZATIONS = ("nfkc", "casefold", "strip")  # always applied in this order
DUPLICATE_POLICIES = ("error", "first")
MAX_SIDE_CELLS = 1_000  # width of a side's one-hot encoding (memory: records x width x 8 bytes)


@dataclass(frozen=True)
class Side:
    """One data holder's part of the job."""

    node: str
    dataset: str
    key: str | None  # None with fuzzy linkage: the records link on `link` columns instead
    by: tuple[str, ...]
    normalize: tuple[str, ...] = ()
    duplicates: str = "error"
    weight: str | None = None
    link: tuple[str, ...] = ()  # this side's linkage columns (fuzzy), in [linkage] order
    where: tuple[Condition, ...] = ()  # filters applied in this side's engine
    bins: dict[str, Bands] = field(default_factory=dict)  # this side's binned `by` columns

    @property
    def columns(self) -> list[str]:
        named = [*([self.key] if self.key else []), *self.link, *self.by]
        named += [self.weight] if self.weight else []
        return list(dict.fromkeys(named))  # a column may both link and tabulate (e.g. sex)

    @property
    def used(self) -> list[str]:
        """Every column this side's engine reads, filter columns included."""
        return list(dict.fromkeys([*self.columns, *(c.column for c in self.where)]))


@dataclass(frozen=True)
class LinkField:
    """One `fields` entry of [linkage]: a left column compared with a right column."""

    left: str
    right: str
    kind: str  # "name", "text", "date" or "exact"
    left_format: str = ISO_DATE  # strptime format (dates only)
    right_format: str = ISO_DATE


@dataclass(frozen=True)
class Linkage:
    """[linkage]: exact (on `key`, the default) or fuzzy (on several fields, no key)."""

    method: str = "exact"
    fields: tuple[LinkField, ...] = ()
    threshold: float = DEFAULT_THRESHOLD

    @property
    def fuzzy(self) -> bool:
        return self.method == "fuzzy"


@dataclass(frozen=True)
class LinkedJob(WithDisclosure):
    helper: str
    left: Side
    right: Side
    domains: dict[str, tuple[str, ...]]
    other: bool = False
    disclosure: Disclosure = Disclosure()
    linkage: Linkage = Linkage()

    def cell_domains(self, side: Side) -> list[tuple[str, ...]]:
        """Per `by` column of a side, its categories as the table shows them."""
        extra = (OTHER,) if self.other else ()
        return [self.domains[c] + extra for c in side.by]

    def width(self, side: Side) -> int:
        """Number of cells of one side's part of the table (its one-hot width)."""
        return math.prod(len(d) for d in self.cell_domains(side))

    @property
    def n_cells(self) -> int:
        return self.width(self.left) * self.width(self.right)

    @property
    def weighted(self) -> bool:
        return self.right.weight is not None

    def widths(self) -> tuple[int, int]:
        """One-hot widths of U and V (V carries a weighted copy when the job has a weight)."""
        return self.width(self.left), self.width(self.right) * (2 if self.weighted else 1)


def _parse_side(doc: dict[str, Any], name: str, linkage: Linkage) -> Side:
    table = doc.get(name)
    _require(isinstance(table, dict), f"the job needs a [{name}] table (node, dataset, key, by)")
    unknown = set(table) - SIDE_FIELDS
    _require(not unknown, f"unknown field(s) in [{name}]: {', '.join(sorted(unknown))}")
    for required in ("node", "dataset") if linkage.fuzzy else ("node", "dataset", "key"):
        value = table.get(required)
        _require(isinstance(value, str) and value, f"[{name}] needs `{required}` (a name)")
    _require(
        not (linkage.fuzzy and "key" in table),
        f'[{name}] has no `key` with method = "fuzzy": the records link on [linkage] `fields`',
    )
    by = _string_list(table.get("by"), f"{name}.by")
    _require(len(set(by)) == len(by), f"[{name}] `by` names a column twice")
    normalize = table.get("normalize", [])
    _require(
        isinstance(normalize, list) and all(n in NORMALIZATIONS for n in normalize),
        f"[{name}] `normalize` is a list of {', '.join(map(repr, NORMALIZATIONS))}",
    )
    duplicates = table.get("duplicates", "error")
    _require(
        duplicates in DUPLICATE_POLICIES,
        f"[{name}] `duplicates` must be {' or '.join(map(repr, DUPLICATE_POLICIES))}",
    )
    weight = table.get("weight")
    _require(weight is None or name == "right", "`weight` goes in [right] (the survey side)")
    _require(weight is None or (isinstance(weight, str) and weight), "`weight` names one column")
    key = table.get("key")
    link = tuple(getattr(f, name) for f in linkage.fields)
    _require(key not in by, f"[{name}] the key cannot also be a `by` column")
    _require(
        weight is None or weight not in (key, *by, *link),
        f"[{name}] `weight` cannot be the key, `by` or linked",
    )
    normalized = tuple(n for n in NORMALIZATIONS if n in normalize)
    where = parse_where(table)
    return Side(
        table["node"], table["dataset"], key, by, normalized, duplicates, weight, link, where
    )  # fmt: skip


def _split_filters(doc: dict[str, Any], left: Side, right: Side) -> tuple[Side, Side]:
    """Top-level [where] and [bins] entries go to the side that names their column."""
    where, bins = parse_where(doc), parse_bins(doc, left.by + right.by)
    sides = []
    for name, side, other in (("left", left, right), ("right", right, left)):
        mine = [c for c in where if c.column in side.columns]
        for condition in mine:
            _require(
                condition.column not in other.columns,
                f"[where] `{shown(condition.column)}` is named by both sides; put it in "
                "[left.where] or [right.where]",
            )
        banded = {c: b for c, b in bins.items() if c in side.by}
        for column in banded:
            _require(
                column not in (side.key, *side.link),
                f"[bins] `{shown(column)}` links the records of [{name}]; band a `by` column only",
            )
        twice = {c.column for c in side.where} & {c.column for c in mine}
        _require(not twice, f"[where] and [{name}.where] both filter {names(twice)}")
        sides.append(replace(side, where=side.where + tuple(mine), bins=banded))
    unplaced = sorted({c.column for c in where} - set(left.columns) - set(right.columns))
    _require(
        not unplaced,
        f"[where] column(s) {names(unplaced)} named by neither side; "
        "put them in [left.where] or [right.where]",
    )
    return sides[0], sides[1]


def _parse_field(entry: Any, k: int) -> LinkField:
    where = f"[linkage] fields[{k}]"
    _require(isinstance(entry, dict), f"{where} must be a table {{left, right, kind}}")
    unknown = set(entry) - FIELD_KEYS
    _require(not unknown, f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    for key in ("left", "right"):
        _require(
            isinstance(entry.get(key), str) and entry[key], f"{where} needs `{key}` (a column)"
        )
    kind = entry.get("kind")
    _require(kind in FIELD_KINDS, f"{where} `kind` must be one of {', '.join(FIELD_KINDS)}")
    formats = [entry.get(f"{s}_format", ISO_DATE) for s in ("left", "right")]
    _require(
        kind == "date" or not ({"left_format", "right_format"} & set(entry)),
        f'{where}: `left_format`/`right_format` apply to kind = "date" only',
    )
    _require(
        all(isinstance(f, str) and "%" in f for f in formats),
        f'{where}: a date format is a strptime pattern such as "%d.%m.%Y"',
    )
    return LinkField(entry["left"], entry["right"], kind, *formats)


def parse_linkage(doc: dict[str, Any]) -> Linkage:
    table = doc.get("linkage", {})
    _require(isinstance(table, dict), "[linkage] must be a table")
    unknown = set(table) - LINKAGE_FIELDS
    _require(not unknown, f"unknown field(s) in [linkage]: {', '.join(sorted(unknown))}")
    method = table.get("method", "exact")
    _require(method in METHODS, f"[linkage] `method` must be {' or '.join(map(repr, METHODS))}")
    if method == "exact":
        _require(
            set(table) <= {"method"}, '[linkage] `fields` and `threshold` need method = "fuzzy"'
        )
        return Linkage()
    fields = table.get("fields")
    _require(
        isinstance(fields, list) and 0 < len(fields) <= MAX_LINK_FIELDS,
        f"[linkage] `fields` must list 1 to {MAX_LINK_FIELDS} fields",
    )
    parsed = tuple(_parse_field(entry, k) for k, entry in enumerate(fields))
    for side in ("left", "right"):
        columns = [getattr(f, side) for f in parsed]
        _require(len(set(columns)) == len(columns), f"[linkage] links a {side} column twice")
    _require(
        any(f.kind != "exact" for f in parsed),
        '[linkage] needs at least one field of kind "name", "text" or "date"',
    )
    threshold = table.get("threshold", DEFAULT_THRESHOLD)
    _require(
        isinstance(threshold, (int, float))
        and not isinstance(threshold, bool)
        and 0.5 <= threshold < 1,
        "[linkage] `threshold` is a match probability in [0.5, 1)",
    )
    return Linkage("fuzzy", parsed, float(threshold))


def parse(doc: dict[str, Any]) -> LinkedJob:
    unknown = set(doc) - FIELDS
    _require(not unknown, f"unknown field(s) in {KIND} job: {', '.join(sorted(unknown))}")
    helper = doc.get("helper")
    _require(isinstance(helper, str) and bool(helper), "`helper` must name the third party")
    linkage = parse_linkage(doc)
    left, right = _parse_side(doc, "left", linkage), _parse_side(doc, "right", linkage)
    shared = set(left.by) & set(right.by)
    _require(
        not shared,
        f"`by` column(s) {', '.join(sorted(shared))} appear on both sides; "
        "the table needs distinct column names",
    )
    left, right = _split_filters(doc, left, right)
    domains, other = _parse_domains(doc, left.by + right.by, {**left.bins, **right.bins})
    disclosure = parse_disclosure(doc)
    _require(
        not (disclosure.epsilon and (left.weight or right.weight)),
        "`epsilon` with a survey `weight` is not supported yet",
    )
    _require(
        not disclosure.margins or all(TOTAL not in domains[c] for c in left.by + right.by),
        f"with `margins`, no domain may contain {TOTAL!r}",
    )
    job = LinkedJob(helper, left, right, domains, other, disclosure, linkage)
    for name, side in (("left", left), ("right", right)):
        _require(
            job.width(side) <= MAX_SIDE_CELLS,
            f"the [{name}] `by` columns have {job.width(side)} combinations; "
            f"at most {MAX_SIDE_CELLS}",
        )
    _require(job.n_cells <= MAX_CELLS, f"the table has {job.n_cells} cells; at most {MAX_CELLS}")
    return job


def plan(job: LinkedJob, view: FederationView) -> Plan:
    """Parties (left, right, helper): the helper must be a third node, not a data holder."""
    nodes = (job.left.node, job.right.node, job.helper)
    for name in nodes:
        _require(name in view.roles, f"unknown node {name!r}: it is not in the roster")
        _require(name in view.online, f"node {name!r} is not connected")
    _require(job.left.node != job.right.node, "[left] and [right] must be different nodes")
    if job.helper in (job.left.node, job.right.node):
        raise JobError(
            f"helper {job.helper!r} holds one side's data; the helper must be a third node "
            "(a compute-only node is fine)"
        )
    for side in (job.left, job.right):
        _require(
            side.dataset in view.datasets.get(side.node, ()),
            f"node {side.node!r} does not expose dataset {side.dataset!r}",
        )
    return Plan(nodes, nodes[:2])


def columns_used(job: LinkedJob, node: str) -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for side in (job.left, job.right):
        if side.node == node:
            used.setdefault(side.dataset, []).extend(side.used)
    return used

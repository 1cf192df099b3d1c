"""A job's `[where]` filters and `[bins]` bands: schema and validation (docs/user.md).

```toml
[where]                        # all conditions must hold
status = ["idp", "returnee"]   # value in a list (compared as text, as domains are)
age = { max = 79 }             # numeric range: min and/or max, inclusive
[bins]
age = [0, 18, 60, 80]          # bands [0,18), [18,60), [60,80), labelled "0-18", "18-60", "60-80"
```

Both run in the node's engine (node/sources.py turns them into SQL with bound parameters);
here they are only parsed. A binned column's domain is its bands' labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jointstats.errors import JobError

RANGE_KEYS = {"min", "max"}
MAX_LIST = 1_000  # values of one `[where]` list
MAX_EDGES = 201  # edges of one `[bins]` entry (at most 200 bands)


@dataclass(frozen=True)
class Condition:
    """One `[where]` entry: `values` (value in the list), or a numeric `low`/`high` range."""

    column: str
    values: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Bands:
    """One `[bins]` entry: half-open bands [edges[i], edges[i+1])."""

    column: str
    edges: tuple[float, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        text = [_number(e) for e in self.edges]
        return tuple(f"{a}-{b}" for a, b in zip(text, text[1:], strict=False))


def shown(name: str) -> str:
    """A job-supplied name as a message shows it: on one line, quoted when not printable."""
    return name if name.isprintable() else repr(name)


def names(items: Any) -> str:
    return ", ".join(shown(str(n)) for n in sorted(items))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(message: str) -> None:
    raise JobError(message)


def _condition(column: str, spec: Any) -> Condition:
    if isinstance(spec, list):
        if not (0 < len(spec) <= MAX_LIST) or not all(
            isinstance(v, (str, int)) and not isinstance(v, bool) for v in spec
        ):
            _fail(f"[where] `{shown(column)}`: a list holds 1 to {MAX_LIST} texts or integers")
        return Condition(column, values=tuple(dict.fromkeys(str(v) for v in spec)))
    if isinstance(spec, dict):
        unknown = set(spec) - RANGE_KEYS
        if unknown or not spec or not all(_is_number(v) for v in spec.values()):
            _fail(f"[where] `{shown(column)}`: a range is {{ min = ..., max = ... }} (or one)")
        low, high = spec.get("min"), spec.get("max")
        if low is not None and high is not None and low > high:
            _fail(f"[where] `{shown(column)}`: `min` is above `max`")
        return Condition(
            column,
            low=float(low) if low is not None else None,
            high=float(high) if high is not None else None,
        )
    _fail(f"[where] `{shown(column)}` must be a list of values or a range {{ min, max }}")
    raise AssertionError  # unreachable


def parse_where(doc: dict[str, Any]) -> tuple[Condition, ...]:
    raw = doc.get("where", {})
    if not isinstance(raw, dict):
        _fail("[where] must be a table of column = condition")
    return tuple(_condition(str(column), spec) for column, spec in raw.items())


def parse_bins(doc: dict[str, Any], by: tuple[str, ...]) -> dict[str, Bands]:
    raw = doc.get("bins", {})
    if not isinstance(raw, dict):
        _fail("[bins] must be a table of column = [edges]")
    unused = [c for c in raw if c not in by]
    if unused:
        _fail(f"[bins] names column(s) not in `by`: {names(unused)}")
    bands = {}
    for column, edges in raw.items():
        if not (
            isinstance(edges, list)
            and 2 <= len(edges) <= MAX_EDGES
            and all(_is_number(e) for e in edges)
            and all(a < b for a, b in zip(edges, edges[1:], strict=False))
        ):
            _fail(
                f"[bins] `{shown(column)}` must list 2 to {MAX_EDGES} strictly increasing finite "
                "numbers (band edges)"
            )
        bands[column] = Bands(column, tuple(float(e) for e in edges))
    return bands

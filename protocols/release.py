"""Disclosure settings and the one release step both protocols use (DESIGN §5.3).

`parse_disclosure` is the only parser of a job's `[disclosure]` table. `release` takes the
secret-shared cells of a table and returns a typed `Release`:

1. the table's entries: the cells, then (with `margins`) row totals, column totals and the
   grand total, all still secret-shared;
2. primary suppression inside MPC: a flag [count < k] per entry (a zero is released with
   `release_zeros`), opened, so that the parties know which entries are below k;
3. secondary suppression on that public pattern (`jointstats.protocols.suppression`): extra
   entries chosen by a rule that depends on the pattern only, never on values, until every
   suppressed entry's feasible interval in the attacker's linear programme (released entries,
   every released total, n for linked tables, non-negativity) spans at least `protection`
   (default `min_cell`) integer values;
4. only then the released entries' values are opened;
5. the released table is audited again with the attacker's LP (HiGHS) on the opened values;
   a failure refuses the release (it cannot happen unless step 3 is wrong), and the narrowest
   interval goes into the result's metadata.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from jointstats.errors import JobError

MAX_EPSILON = 10.0
DEFAULT_MIN_CELL = 5
FIELDS = ("min_cell", "protection", "release_zeros", "margins", "epsilon")


@dataclass(frozen=True)
class Disclosure:
    """A job's `[disclosure]` table, validated."""

    min_cell: int = DEFAULT_MIN_CELL
    protection: int = 0  # 0: the interval must span min_cell values
    release_zeros: bool = False
    margins: bool = False
    epsilon: float = 0.0

    def effective(self, min_cell: int, protection: int) -> dict[str, Any]:
        """The settings a session runs with, after the nodes' floors are applied."""
        return {
            "min_cell": min_cell,
            "protection": max(protection, min_cell),
            "release_zeros": self.release_zeros,
            "margins": self.margins,
            "epsilon": self.epsilon,
        }


class WithDisclosure:
    """Shortcuts to a job's disclosure settings, for job dataclasses with a `disclosure`."""

    disclosure: Disclosure

    @property
    def min_cell(self) -> int:
        return self.disclosure.min_cell

    @property
    def release_zeros(self) -> bool:
        return self.disclosure.release_zeros

    @property
    def margins(self) -> bool:
        return self.disclosure.margins

    @property
    def epsilon(self) -> float:
        return self.disclosure.epsilon


def _whole(value: Any, name: str, minimum: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise JobError(f"`{name}` in [disclosure] must be a whole number >= {minimum}")
    return value


def parse_disclosure(doc: dict[str, Any]) -> Disclosure:
    table = doc.get("disclosure", {})
    if not isinstance(table, dict):
        raise JobError("[disclosure] must be a table")
    unknown = set(table) - set(FIELDS)
    if unknown:
        shown = ", ".join(n if n.isprintable() else repr(n) for n in sorted(unknown))
        raise JobError(f"unknown field(s) in [disclosure]: {shown}")
    min_cell = _whole(table.get("min_cell", DEFAULT_MIN_CELL), "min_cell", 1)
    protection = _whole(table.get("protection", 0), "protection", 0)
    flags = [table.get(name, False) for name in ("release_zeros", "margins")]
    if not all(isinstance(f, bool) for f in flags):
        raise JobError("`release_zeros` and `margins` in [disclosure] must be true or false")
    epsilon = table.get("epsilon", 0.0)
    if not (
        isinstance(epsilon, (int, float))
        and not isinstance(epsilon, bool)
        and (epsilon == 0 or 0 < epsilon <= MAX_EPSILON)
    ):
        raise JobError(f"`epsilon` in [disclosure] must be a number in (0, {MAX_EPSILON:g}]")
    return Disclosure(min_cell, protection, flags[0], flags[1], float(epsilon))


@dataclass(frozen=True)
class Release:
    """What `release` decided and opened, entry by entry (cells, then margins)."""

    suppressed: list[bool]
    values: list[dict[str, int] | None]  # None for a suppressed entry
    primary_cells: int
    secondary_cells: int
    narrowest_interval: float | None  # smallest feasible range of a suppressed entry (None:
    # nothing suppressed, or no released total bounds it)


def entry_indices(shape: tuple[int, ...], margins: bool) -> list[list[int]]:
    """Which cells (row-major) each entry adds up: cells, row totals, column totals, total."""
    cells = [[i] for i in range(_prod(shape))]
    if not margins:
        return cells
    if len(shape) == 1:
        return [*cells, list(range(shape[0]))]
    rows, cols = shape
    row_totals = [[r * cols + c for c in range(cols)] for r in range(rows)]
    col_totals = [[r * cols + c for r in range(rows)] for c in range(cols)]
    return [*cells, *row_totals, *col_totals, list(range(rows * cols))]


def _prod(shape: tuple[int, ...]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


async def release(
    mpc: Any,
    measures: dict[str, list[Any]],
    shape: tuple[int, ...],
    settings: dict[str, Any],
    known_total: int | None = None,
    bits: int | None = None,
) -> Release:
    """Suppress and open a table. `measures` maps a name to the secret-shared cells (row-major;
    "count" decides suppression); `settings` is the session's effective disclosure; a public
    `known_total` (a linked table's n) is a grand total the attacker knows; `bits` bounds
    |count - k| for cheaper comparisons."""
    k, margins = settings["min_cell"], settings["margins"]
    if settings.get("epsilon"):
        known_total = None  # noisy cells do not add up to n; the noise protects them
    index = entry_indices(shape, margins)
    entries = {
        name: [cells[i[0]] if len(i) == 1 else mpc.sum([cells[j] for j in i]) for i in index]
        for name, cells in measures.items()
    }
    counts = entries["count"]
    below = [_less(mpc, c, k, bits) for c in counts]
    zero = [_is_zero(mpc, c, bits) for c in counts] if settings["release_zeros"] else None
    primary, released_zero = await _open_flags(mpc, below, zero)
    from jointstats.protocols import suppression  # scipy: loaded in session workers only

    layout = suppression.layout(shape, margins, known_total is not None)
    never = {i for i, z in enumerate(released_zero) if z} | set(layout.forced_released)
    protection = settings.get("protection") or k
    primary = [p and i not in layout.forced_released for i, p in enumerate(primary)]
    suppressed = suppression.complete_pattern(layout, primary, k, protection, never, known_total)
    values = await _open_values(mpc, entries, suppressed)
    opened = [None if v is None else v["count"] for v in values]
    audit = suppression.audit_release(layout, opened, k, protection, known_total)
    if not audit.passed:
        raise JobError(
            "the suppression audit failed: a suppressed cell would be narrowed to fewer than "
            f"{protection} values; the table is withheld"
        )
    width = audit.narrowest_width
    return Release(
        suppressed,
        values,
        sum(primary),
        sum(s and not p for s, p in zip(suppressed, primary, strict=True)),
        None if width is None or math.isinf(width) else width,  # None: nothing hidden is bounded
    )


def _less(mpc: Any, count: Any, k: int, bits: int | None) -> Any:
    if bits is None:
        return count < k
    return mpc.sgn(count - k, l=bits, LT=True)


def _is_zero(mpc: Any, count: Any, bits: int | None) -> Any:
    if bits is None:
        return count == 0
    return mpc.sgn(count, l=bits, EQ=True)


async def _open_flags(mpc: Any, below: list, zero: list | None) -> tuple[list[bool], list[bool]]:
    """Open [count < k] per entry; with release_zeros a zero is not suppressed, and its
    zero-ness is opened (it is released as 0 anyway, and must never be a complement)."""
    if zero is None:
        return [bool(b) for b in await mpc.output(below)], [False] * len(below)
    zero_released = list(zero)
    flags = [b * (1 - z) for b, z in zip(below, zero, strict=True)]
    opened = [bool(x) for x in await mpc.output(flags + zero_released)]
    return opened[: len(below)], opened[len(below) :]


async def _open_values(
    mpc: Any, entries: dict[str, list[Any]], suppressed: list[bool]
) -> list[dict[str, int] | None]:
    """Open every measure of the released entries, all measures in parallel."""
    shown = [i for i, hidden in enumerate(suppressed) if not hidden]
    names = list(entries)
    if not shown:
        return [None] * len(suppressed)
    opened = await asyncio.gather(*(mpc.output([entries[m][i] for i in shown]) for m in names))
    values: list[dict[str, int] | None] = [None] * len(suppressed)
    for j, i in enumerate(shown):
        values[i] = {m: int(opened[n][j]) for n, m in enumerate(names)}
    return values

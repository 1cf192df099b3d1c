"""Secondary cell suppression that survives the attacker's linear programme (DESIGN §5.3).

Pure Python on PUBLIC information: the table layout, which entries were primary-suppressed (their
flags are opened in MPC), k, the protection level and, for linked tables, the public matched
count n. Nothing here sees a secret count except `attacker_intervals` / `audit_release`, which
audit a table after its released values are opened.

Entries (`layout`): the cells in row-major order; with margins and two dimensions the row totals,
then the column totals, then the grand total; with margins and one dimension the cells then the
grand total. The attacker knows the identities A x = b between entries (each total is the sum of
its parts), the released values, non-negativity and, for linked tables, sum(cells) = n.

Target: every suppressed entry's feasible interval in the attacker's LP spans at least
P = max(k, protection) integer values, i.e. upper - lower >= P - 1.

Value-independent test (`failing_entries`). Every unsuppressed entry that is not a released zero
or forced has a count >= k (that is what "not primary" means), so a secondary entry j has
x_j >= L_j := k, and a primary one only x_j >= L_j := 0. Suppressed entry i passes if a direction
d exists with A d = 0, d_j = 0 on every released entry, d_i = 1 and d_j >= -L_j / (P - 1) for the
other suppressed entries (one HiGHS feasibility LP). Then for EVERY true table x* consistent with
the pattern, x* + (P - 1) d satisfies the identities, keeps the released values and stays
non-negative (x*_j + (P - 1) d_j >= L_j - L_j = 0), so the attacker's interval for entry i
contains [x*_i, x*_i + P - 1]. A secondary entry may instead move DOWN (d_i = -1) when
P <= k + 1: x*_i - (P - 1) >= k - (P - 1) >= 0, so the interval contains [x*_i - P + 1, x*_i].
The test depends on the pattern only, never on values. Passing is monotone: suppressing one more
entry adds a variable whose old value 0 is still allowed. A witness d also certifies every j with
|d_j| >= max over the other secondaries m of -d_m (P - 1) / k (scale d by 1 / |d_j|), which
saves most LPs; witnesses are L1-cheapest (sparse), so dropping an entry later rechecks only the
entries whose witness moved it.

Completion (`complete_pattern`), deterministic and value-independent. Suppressed entries are
checked in index order; for the first failing one, i, a "fix" LP looks for the same direction
while letting every allowed unsuppressed entry j move too (as a future secondary, so
d_j >= -k / (P - 1)), minimising a fixed cost per unit |d_j| (cells 1, totals 2: totals carry
more information; up or down, whichever is cheaper, for a secondary i). The entries the
solution moves are suppressed (with them, d is a witness for i) and checking resumes. An
infeasible fix LP proves that no completion passes the test. Then redundant secondaries are
dropped, highest index first, when everything still passes. Every
choice is a function of (layout, primary pattern, never_suppress, k, P, solver version) only, so
the final pattern reveals nothing beyond which entries were primary; every party that runs it
with the pinned scipy gets the same pattern.

Linked tables (known n): when no completion passes the test (typically: every cell below k), the
fallback suppresses everything allowed; with only zeros and n released the attacker's intervals
no longer depend on the values, so they are checked exactly with the LP from public data; if they
are too narrow (n < P - 1) `JobError` is raised.

The audit (`audit_release`) is defence in depth: min and max of every suppressed entry with the
opened values (scipy.optimize.linprog, HiGHS), the same bounds a tau-Argus / sdcTable audit uses.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from jointstats.errors import JobError

if TYPE_CHECKING:  # scipy (≈0.2 s CPU to import) loads when a table has identities to solve
    from scipy import sparse

__all__ = [
    "AuditResult",
    "TableLayout",
    "attacker_intervals",
    "audit_release",
    "complete_pattern",
    "failing_entries",
    "layout",
    "narrowest_interval",
]

TOLERANCE = 1e-6  # widths are compared to P - 1 with this slack (LP vertices are integral)
_SUPPORT = 1e-7  # |d_j| above this in a fix LP solution means "entry j must be suppressed"
_TOTAL_COST = 2.0  # cost of moving a total in the fix LP, relative to a cell
_SUPPRESSED_COST = 0.01  # cost of moving an already suppressed entry


@dataclass(frozen=True)
class TableLayout:
    """Entry order and the identities the attacker knows. Each identity is a tuple of
    (entry, coefficient); its right-hand side is 0, except row `rhs_total_row` (sum of the cells
    = n, linked tables without margins). `forced_released` entries always equal the public n."""

    shape: tuple[int, ...]
    margins: bool
    known_total: bool
    n_cells: int
    n_entries: int
    identities: tuple[tuple[tuple[int, int], ...], ...]
    rhs_total_row: int | None = None
    grand_total: int | None = None
    forced_released: frozenset[int] = field(default_factory=frozenset)

    @cached_property
    def matrix(self) -> sparse.csc_array:
        """A as a sparse (identities x entries) matrix."""
        from scipy import sparse

        rows, cols, data = [], [], []
        for r, identity in enumerate(self.identities):
            for entry, coef in identity:
                rows.append(r)
                cols.append(entry)
                data.append(float(coef))
        shape = (len(self.identities), self.n_entries)
        return sparse.csc_array((data, (rows, cols)), shape=shape)

    @cached_property
    def neighbours(self) -> tuple[tuple[int, ...], ...]:
        """Per entry, the entries sharing an identity with it (sorted)."""
        near: list[set[int]] = [set() for _ in range(self.n_entries)]
        for identity in self.identities:
            members = {entry for entry, _ in identity}
            for entry in members:
                near[entry] |= members - {entry}
        return tuple(tuple(sorted(s)) for s in near)

    def is_total(self, entry: int) -> bool:
        return entry >= self.n_cells


def layout(shape: tuple[int, ...], margins: bool, known_total: bool) -> TableLayout:
    """The entry order the MPC programs emit, and the identities between entries."""
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"bad table shape {shape}")
    if margins and len(shape) > 2:
        raise ValueError("margins are defined for one or two dimensions only")
    n_cells = math.prod(shape)
    cells = list(range(n_cells))
    identities: list[tuple[tuple[int, int], ...]] = []
    if not margins:
        rhs_row = None
        if known_total:
            rhs_row = len(identities)
            identities.append(tuple((c, 1) for c in cells))
        # With n known, a table of one cell is n itself.
        forced = frozenset(cells) if known_total and n_cells == 1 else frozenset()
        return TableLayout(
            shape, margins, known_total, n_cells, n_cells, tuple(identities), rhs_row, None, forced
        )
    if len(shape) == 1:
        grand = n_cells
        identities.append(((grand, 1), *((c, -1) for c in cells)))
        covers_all = {grand} | ({0} if n_cells == 1 else set())
    else:
        rows, cols = shape
        row_t = [n_cells + r for r in range(rows)]
        col_t = [n_cells + rows + c for c in range(cols)]
        grand = n_cells + rows + cols
        for r in range(rows):
            identities.append(((row_t[r], 1), *((r * cols + c, -1) for c in range(cols))))
        for c in range(cols):
            identities.append(((col_t[c], 1), *((r * cols + c, -1) for r in range(rows))))
        identities.append(((grand, 1), *((t, -1) for t in row_t)))
        identities.append(((grand, 1), *((t, -1) for t in col_t)))
        # Entries whose parts are every cell equal the grand total (one row, one column).
        covers_all = {grand} | (set(row_t) if rows == 1 else set())
        covers_all |= (set(col_t) if cols == 1 else set()) | ({0} if n_cells == 1 else set())
    forced = frozenset(covers_all) if known_total else frozenset()
    return TableLayout(
        shape, margins, known_total, n_cells, grand + 1, tuple(identities), None, grand, forced
    )


def _target(k: int, protection: int | None) -> int:
    if k < 1:
        raise ValueError("k must be at least 1")
    return max(k, protection or k)


class _Tester:
    """The value-independent test and the fix LP for one layout, k and P."""

    def __init__(self, lay: TableLayout, primary: set[int], k: int, target: int, fixed: set[int]):
        self.lay, self.primary, self.fixed = lay, primary, fixed
        self.step = k / (target - 1)  # how far down a secondary entry may move in a witness
        self.matrix = lay.matrix
        self.support: dict[int, frozenset[int]] = {}

    def signs(self, i: int) -> tuple[float, ...]:
        """Up always; down too for a secondary entry when x_i - (P - 1) >= k - (P - 1) >= 0."""
        return (1.0, -1.0) if i not in self.primary and self.step >= 1.0 else (1.0,)

    def direction(
        self, i: int, sign: float, suppressed: list[int], cand: Sequence[int] = ()
    ) -> tuple[dict[int, float], float] | None:
        """The cheapest direction d (and its cost) over `suppressed` (sorted) and the candidate
        entries with d_i = sign that proves entry i passes once the moved candidates are
        suppressed too, or None.

        d = up - down per entry; down is capped by L_j / (P - 1) (0 for primary entries, k for
        secondaries and candidates); moving a candidate costs 1 (cell) or 2 (total) per unit,
        an already suppressed entry 0.01 (it keeps the witness sparse, so pruning rechecks
        few entries)."""
        from scipy import sparse

        movable = [*suppressed, *cand]
        n = len(movable)
        cost = [_SUPPRESSED_COST] * len(suppressed)
        cost += [_TOTAL_COST if self.lay.is_total(j) else 1.0 for j in cand]
        bounds = np.zeros((2 * n, 2))
        bounds[:n, 1] = np.inf
        bounds[n:, 1] = [0.0 if j in self.primary else self.step for j in movable]
        at = suppressed.index(i)
        bounds[at] = max(sign, 0.0)
        bounds[n + at] = max(-sign, 0.0)
        a_m = self.matrix[:, movable]
        res = _solve(np.array(cost + cost), sparse.hstack([a_m, -a_m], format="csc"), bounds)
        if res.status != 0:
            return None
        return dict(zip(movable, res.x[:n] - res.x[n:], strict=True)), float(res.fun)

    def certified(self, d: dict[int, float]) -> set[int]:
        """Entries j for which d / |d_j| is a witness too (up, or down for a secondary when
        step >= 1): |d_j| >= -d_m / step for every other secondary m, with the LP's
        tolerance."""
        ratios = sorted(
            (max(-v, 0.0) / self.step, j) for j, v in d.items() if j not in self.primary
        )
        top = ratios[-2:] or [(0.0, -1)]
        down_ok = self.step >= 1.0
        out = set()
        for j, v in d.items():
            others = top[-1][0] if top[-1][1] != j else (top[0][0] if len(top) > 1 else 0.0)
            need = max(others, 1e-6) - 1e-9
            if v >= need or (down_ok and j not in self.primary and -v >= need):
                out.add(j)
        return out

    def check(self, entries: Sequence[int], suppressed: set[int], fail_fast: bool = False):
        """Those of `entries` that fail, in the order given; the witnesses found are recorded
        in `self.support` (entry -> entries its witness moves)."""
        order = sorted(suppressed)
        passed: set[int] = set()
        failing: list[int] = []
        for i in entries:
            if i in passed or i in failing:
                continue
            found = None
            for sign in self.signs(i):
                found = found or self.direction(i, sign, order)
            if found is None:
                failing.append(i)
                if fail_fast:
                    break
                continue
            d = found[0]
            moved = frozenset(j for j, v in d.items() if abs(v) > 1e-9)
            for j in self.certified(d) | {i}:
                passed.add(j)
                self.support[j] = moved
        return failing

    def fix(self, i: int, suppressed: set[int]) -> set[int] | None:
        """Allowed unsuppressed entries that, suppressed, make entry i pass (None: none do);
        the cheaper of moving i up or down, up on ties."""
        cand = [j for j in range(self.lay.n_entries) if j not in suppressed and j not in self.fixed]
        options = [self.direction(i, sign, sorted(suppressed), cand) for sign in self.signs(i)]
        options = [o for o in options if o is not None]
        if not options:
            return None
        d, _ = min(options, key=lambda o: o[1])
        return {j for j in cand if abs(d[j]) > _SUPPORT}


def _solve(c: np.ndarray, a_eq: sparse.sparray, bounds: np.ndarray, b_eq: np.ndarray | None = None):
    """HiGHS through linprog; bounds as an (n, 2) array (much faster to parse than tuples)."""
    from scipy.optimize import linprog

    if b_eq is None:
        b_eq = np.zeros(a_eq.shape[0])
    return linprog(c, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")


def _setup(
    lay: TableLayout, primary: Sequence[bool], never_suppress: Collection[int]
) -> tuple[set[int], set[int]]:
    if len(primary) != lay.n_entries:
        raise ValueError(f"expected {lay.n_entries} primary flags, got {len(primary)}")
    fixed = set(never_suppress) | set(lay.forced_released)
    # Forced entries equal the public n: released even when below k.
    suppressed = {i for i, p in enumerate(primary) if p} - set(lay.forced_released)
    if suppressed & fixed:
        raise ValueError("an entry is both primary-suppressed and in never_suppress")
    return suppressed, fixed


def failing_entries(
    lay: TableLayout,
    suppressed: Sequence[bool],
    primary: Sequence[bool],
    k: int,
    protection: int | None = None,
    never_suppress: Collection[int] = (),
) -> list[int]:
    """Suppressed entries that fail the value-independent test, in index order."""
    target = _target(k, protection)
    prim, fixed = _setup(lay, primary, never_suppress)
    sup = {i for i, s in enumerate(suppressed) if s} - set(lay.forced_released)
    if target <= 1 or not lay.identities:
        return []
    return _Tester(lay, prim, k, target, fixed).check(sorted(sup), sup)


def complete_pattern(
    lay: TableLayout,
    primary: Sequence[bool],
    k: int,
    protection: int | None = None,
    never_suppress: Collection[int] = (),
    total: int | None = None,
) -> list[bool]:
    """The final suppression pattern (True = suppressed), from public information only.

    `total` is the public n of a linked table (known_total); it is used only when no completion
    passes the test, to check the all-suppressed fallback. Raises JobError if nothing protects.
    """
    target = _target(k, protection)
    prim, fixed = _setup(lay, primary, never_suppress)
    if target <= 1 or not lay.identities:  # no identities: every suppressed entry is unbounded
        return _as_flags(lay, prim)
    tester = _Tester(lay, prim, k, target, fixed)
    suppressed = _greedy(tester, set(prim))
    if suppressed is None:
        return _fallback(lay, fixed, target, total)
    return _as_flags(lay, _prune(tester, suppressed, prim))


def _greedy(tester: _Tester, suppressed: set[int]) -> set[int] | None:
    """Check entries in index order; fix the first failing one; go on. Passing is monotone, so
    an entry once passed stays passed while entries are added."""
    queue = sorted(suppressed)
    while queue:
        i = heapq.heappop(queue)
        if i in tester.support or not tester.check([i], suppressed):
            continue
        added = tester.fix(i, suppressed)
        if not added:  # infeasible (or numerically empty): no completion passes the test
            return None
        suppressed |= added
        for j in sorted(added | {i}):
            heapq.heappush(queue, j)
    return suppressed


def _prune(tester: _Tester, suppressed: set[int], primary: set[int]) -> set[int]:
    """Drop secondaries that are not needed, highest index first. Only the entries whose
    recorded witness moves the dropped entry need a new one; those sharing an identity with it
    are the likeliest to fail, so they go first."""
    for j in sorted(suppressed - primary, reverse=True):
        trial = suppressed - {j}
        affected = {e for e in trial if j in tester.support[e]}
        near = [e for e in tester.lay.neighbours[j] if e in affected]
        saved = dict(tester.support)
        if tester.check([*near, *sorted(affected - set(near))], trial, fail_fast=True):
            tester.support = saved
        else:
            suppressed = trial
            del tester.support[j]
    return suppressed


def _fallback(lay: TableLayout, fixed: set[int], target: int, total: int | None) -> list[bool]:
    """Linked tables: suppress everything allowed. Only zeros (never_suppress) and n are then
    released, so the attacker's intervals follow from public data alone."""
    if not lay.known_total or total is None:
        raise JobError("no suppression pattern protects this table; coarsen its categories")
    suppressed = set(range(lay.n_entries)) - fixed
    if not suppressed:
        raise JobError("no suppression pattern protects this table; coarsen its categories")
    values: list[int | None] = [None] * lay.n_entries
    for j in fixed:
        values[j] = total if j in lay.forced_released else 0
    widths = [hi - lo for lo, hi in attacker_intervals(lay, values, total).values()]
    if min(widths) < target - 1 - TOLERANCE:
        raise JobError("too few matched records to protect any cell; coarsen the categories")
    return _as_flags(lay, suppressed)


def _as_flags(lay: TableLayout, suppressed: set[int]) -> list[bool]:
    return [i in suppressed for i in range(lay.n_entries)]


def attacker_intervals(
    lay: TableLayout,
    values: Sequence[int | None],
    total: int | None = None,
    entries: Collection[int] | None = None,
) -> dict[int, tuple[float, float]]:
    """Min and max of each suppressed entry (values[i] is None) over the attacker's LP:
    identities, released values, n (`total`, linked tables) and non-negativity; +inf when
    unbounded. `entries` restricts the result to some suppressed entries."""
    if len(values) != lay.n_entries:
        raise ValueError(f"expected {lay.n_entries} values, got {len(values)}")
    values = list(values)
    if lay.known_total and total is not None:
        for j in lay.forced_released:
            if values[j] is None:
                values[j] = total
            elif values[j] != total:
                raise ValueError("a forced entry differs from the known total")
    sup = [i for i, v in enumerate(values) if v is None]
    wanted = sup if entries is None else [i for i in sup if i in set(entries)]
    if not lay.identities or not sup:
        return {i: (0.0, math.inf) for i in wanted}
    a_eq, b_eq = _attacker_system(lay, values, sup, total)
    position = {j: p for p, j in enumerate(sup)}
    bounds = np.column_stack([np.zeros(len(sup)), np.full(len(sup), np.inf)])
    result = {}
    for i in wanted:
        c = np.zeros(len(sup))
        c[position[i]] = 1.0
        low, high = _solve(c, a_eq, bounds, b_eq), _solve(-c, a_eq, bounds, b_eq)
        if low.status == 2 or high.status == 2:
            raise ValueError("released values contradict the table identities")
        upper = math.inf if high.status == 3 else -high.fun
        result[i] = (float(low.fun), float(upper))
    return result


def _attacker_system(
    lay: TableLayout, values: list[int | None], sup: list[int], total: int | None
) -> tuple[sparse.sparray, np.ndarray]:
    matrix = lay.matrix
    released = [i for i, v in enumerate(values) if v is not None]
    known = np.array([values[i] for i in released], dtype=float)
    b_eq = -(matrix[:, released] @ known) if released else np.zeros(matrix.shape[0])
    if lay.rhs_total_row is not None:
        if total is None:
            raise ValueError("this layout needs the known total n")
        b_eq[lay.rhs_total_row] += total
    return matrix[:, sup], b_eq


def narrowest_interval(intervals: dict[int, tuple[float, float]]) -> tuple[int, float] | None:
    """The suppressed entry with the narrowest interval (lowest index on ties) and its width."""
    if not intervals:
        return None
    entry = min(intervals, key=lambda i: (intervals[i][1] - intervals[i][0], i))
    low, high = intervals[entry]
    return entry, high - low


@dataclass(frozen=True)
class AuditResult:
    passed: bool
    narrowest_width: float | None
    narrowest_entry: int | None


def audit_release(
    lay: TableLayout,
    values: Sequence[int | None],
    k: int,
    protection: int | None = None,
    total: int | None = None,
) -> AuditResult:
    """Every suppressed entry's interval must span at least P = max(k, protection) integers."""
    target = _target(k, protection)
    narrowest = narrowest_interval(attacker_intervals(lay, values, total))
    if narrowest is None:
        return AuditResult(True, None, None)
    entry, width = narrowest
    return AuditResult(width >= target - 1 - TOLERANCE, width, entry)

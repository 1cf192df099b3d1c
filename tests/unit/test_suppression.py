"""Secondary suppression survives the attacker's LP (protocols/suppression.py, DESIGN §5.3).

Every check of protection goes through `attacker_intervals` / `audit_release` on the TRUE
values, i.e. the attacker's own linear programme (HiGHS), independent of the value-independent
test that `complete_pattern` uses to choose the pattern.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointstats.errors import JobError
from jointstats.protocols.suppression import (
    attacker_intervals,
    audit_release,
    complete_pattern,
    failing_entries,
    layout,
    narrowest_interval,
)

# A 4x4 table whose cells below k = 5 form two 2x2 blocks plus the cell (0, 2) bridging them.
BRIDGE = [
    [1, 2, 3, 9],
    [2, 1, 8, 7],
    [6, 9, 2, 1],
    [7, 8, 3, 4],
]
BRIDGE_CELL = 2  # (0, 2): row 0 + row 1 - column 0 - column 1 leaves exactly this cell


def entries(cells: np.ndarray, margins: bool) -> list[int]:
    """The entry vector in layout order: cells row-major, row totals, column totals, grand."""
    flat = [int(v) for v in cells.ravel()]
    if not margins:
        return flat
    if cells.ndim == 1:
        return [*flat, sum(flat)]
    rows = [int(v) for v in cells.sum(axis=1)]
    cols = [int(v) for v in cells.sum(axis=0)]
    return [*flat, *rows, *cols, int(cells.sum())]


def release(values: list[int], pattern: list[bool]) -> list[int | None]:
    return [None if s else v for v, s in zip(values, pattern, strict=True)]


def old_rule(cells: np.ndarray, k: int) -> list[bool]:
    """The previous rule, in plaintext: a line (row or column, margins released) with exactly
    one suppressed cell gets its smallest other cell suppressed, until nothing changes."""
    rows, cols = cells.shape
    flags = (cells < k).ravel().tolist()
    lines = [[r * cols + c for c in range(cols)] for r in range(rows)]
    lines += [[r * cols + c for r in range(rows)] for c in range(cols)]
    changed = True
    while changed:
        changed = False
        for line in lines:
            if sum(flags[i] for i in line) == 1:
                smallest = min((i for i in line if not flags[i]), key=lambda i: cells.flat[i])
                flags[smallest] = changed = True
    return flags + [False] * (rows + cols + 1)  # every margin is >= k here


def test_layout_order_and_identities() -> None:
    lay = layout((2, 3), margins=True, known_total=False)
    assert (lay.n_cells, lay.n_entries, lay.grand_total) == (6, 12, 11)
    values = entries(np.arange(6).reshape(2, 3), margins=True)
    assert lay.matrix @ np.array(values) == pytest.approx(np.zeros(len(lay.identities)))
    assert values[6:] == [3, 12, 3, 5, 7, 15]
    assert layout((4,), True, True).forced_released == frozenset({4})
    linked = layout((3, 3), margins=False, known_total=True)
    assert linked.rhs_total_row == 0 and linked.forced_released == frozenset()


def test_old_rule_leaves_the_bridge_cell_exactly_recoverable() -> None:
    cells, k = np.array(BRIDGE), 5
    lay = layout((4, 4), margins=True, known_total=False)
    values = entries(cells, margins=True)
    pattern = old_rule(cells, k)
    assert pattern[:16] == (cells < k).ravel().tolist()  # the old rule saw nothing to do
    assert pattern[BRIDGE_CELL]
    intervals = attacker_intervals(lay, release(values, pattern))
    low, high = intervals[BRIDGE_CELL]
    assert low == pytest.approx(high) == pytest.approx(BRIDGE[0][2])  # the attack
    assert narrowest_interval(intervals) == (BRIDGE_CELL, pytest.approx(0.0))
    assert not audit_release(lay, release(values, pattern), k).passed
    assert BRIDGE_CELL in failing_entries(lay, pattern, pattern, k)


def test_completed_bridge_pattern_passes_the_audit() -> None:
    cells, k = np.array(BRIDGE), 5
    lay = layout((4, 4), margins=True, known_total=False)
    values = entries(cells, margins=True)
    primary = [v < k for v in values]
    pattern = complete_pattern(lay, primary, k)
    assert all(p <= s for p, s in zip(primary, pattern, strict=True))
    assert sum(pattern) > sum(primary)
    result = audit_release(lay, release(values, pattern), k)
    assert result.passed and result.narrowest_width >= k - 1
    assert failing_entries(lay, pattern, primary, k) == []


@pytest.mark.parametrize("protection", [None, 8])
def test_linked_table_with_known_n(protection: int | None) -> None:
    cells, k = np.array([[12, 9, 30], [3, 14, 22], [17, 8, 11]]), 5
    n = int(cells.sum())
    lay = layout((3, 3), margins=False, known_total=True)
    values = entries(cells, margins=False)
    primary = [v < k for v in values]
    low, high = attacker_intervals(lay, release(values, primary), total=n)[3]
    assert low == high == 3  # n minus the released cells pins the one suppressed cell
    pattern = complete_pattern(lay, primary, k, protection, total=n)
    assert audit_release(lay, release(values, pattern), k, protection, total=n).passed
    unprotected = audit_release(lay, release(values, primary), k, protection, total=n)
    assert not unprotected.passed and unprotected.narrowest_entry == 3


def test_linked_table_with_margins_keeps_n_released() -> None:
    cells, k = np.array([[2, 9, 30], [13, 14, 22]]), 5
    n = int(cells.sum())
    lay = layout((2, 3), margins=True, known_total=True)
    values = entries(cells, margins=True)
    primary = [v < k for v in values]
    pattern = complete_pattern(lay, primary, k, total=n)
    assert not pattern[lay.grand_total]
    assert audit_release(lay, release(values, pattern), k, total=n).passed


def test_linked_table_too_small_raises_without_values_in_the_message() -> None:
    lay = layout((2, 2), margins=False, known_total=True)
    with pytest.raises(JobError) as caught:
        complete_pattern(lay, [True, True, True, True], 5, total=3)
    assert not re.search(r"\d", str(caught.value))


def test_all_cells_below_k_in_a_linked_table_fall_back_to_full_suppression() -> None:
    lay = layout((2, 2), margins=False, known_total=True)
    pattern = complete_pattern(lay, [True] * 4, 5, total=12)  # e.g. cells 3, 4, 2, 3
    assert pattern == [True] * 4
    assert audit_release(lay, [None] * 4, 5, total=12).passed


def test_without_identities_nothing_is_added() -> None:
    lay = layout((3, 2, 2), margins=False, known_total=False)
    primary = [i % 5 == 0 for i in range(12)]
    assert complete_pattern(lay, primary, 5) == primary
    values = release(list(range(12)), primary)
    assert attacker_intervals(lay, values)[0] == (0.0, float("inf"))


def test_pattern_depends_on_the_primary_pattern_only() -> None:
    k, rng = 5, np.random.default_rng(7)
    mask = rng.random((5, 5)) < 0.35
    tables = [np.where(mask, rng.integers(0, k, (5, 5)), rng.integers(k, 40, (5, 5))) for _ in "ab"]
    lay = layout((5, 5), margins=True, known_total=False)
    patterns = []
    for cells in tables:
        values = entries(cells, margins=True)
        primary = [v < k for v in values]
        assert primary[:25] == mask.ravel().tolist()
        patterns.append(complete_pattern(lay, primary, k))
        assert audit_release(lay, release(values, patterns[-1]), k).passed
    assert not np.array_equal(tables[0], tables[1])
    assert patterns[0] == patterns[1] == complete_pattern(lay, [v < k for v in values], k)


@st.composite
def tables(draw: st.DrawFn) -> tuple:
    k = draw(st.integers(3, 10))
    dims = draw(st.sampled_from([1, 2]))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(dims))
    # Half the cells below k (zeros included), the rest up to 3k.
    low = st.integers(0, k - 1)
    counts = draw(st.lists(st.one_of(low, st.integers(k, 3 * k)), min_size=int(np.prod(shape))))
    cells = np.array(counts[: int(np.prod(shape))]).reshape(shape)
    margins, known_total, release_zeros = (draw(st.booleans()) for _ in range(3))
    protection = draw(st.one_of(st.none(), st.integers(k, k + 4)))
    return cells, k, margins, known_total, release_zeros, protection


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_completed_patterns_pass_the_attackers_lp(case: tuple) -> None:
    cells, k, margins, known_total, release_zeros, protection = case
    lay = layout(cells.shape, margins, known_total)
    values = entries(cells, margins)
    n = int(cells.sum()) if known_total else None
    zeros = {i for i, v in enumerate(values) if v == 0} if release_zeros else set()
    primary = [v < k and i not in zeros for i, v in enumerate(values)]
    never = zeros | set(lay.forced_released)
    try:
        pattern = complete_pattern(lay, primary, k, protection, never_suppress=zeros, total=n)
    except JobError:
        # Only a known n can pin entries; and then even suppressing everything allowed leaves
        # some entry of the TRUE table too narrow.
        assert known_total
        everything = [i not in never for i in range(lay.n_entries)]
        assert not audit_release(lay, release(values, everything), k, protection, n).passed
        return
    assert not any(pattern[i] for i in never)
    assert all(pattern[i] for i, p in enumerate(primary) if p and i not in lay.forced_released)
    assert audit_release(lay, release(values, pattern), k, protection, n).passed

"""Benchmark: value-independent secondary suppression against a value-aware optimum.

For sets of random tables (Poisson counts whose mean is drawn in [k/2, 2k], so many cells fall
below k) it records per table: the primary entries, the secondary entries `complete_pattern`
adds, its time (CPU and wall), and the smallest number of extra suppressions a value-aware
optimum needs so that the attacker's LP on the TRUE values gives every suppressed entry a width
>= P - 1 (`audit_release`). The optimum is found by exhaustive search over subsets of the
allowed entries, smallest first, up to --max-extra entries and --budget subsets per table;
beyond that it is reported as unknown (a lower bound). `complete_pattern`'s own pattern is
audited too: the run fails loudly if one does not pass.

The optimum knows the values, `complete_pattern` may not (it must protect every table with the
same primary pattern, including primary cells that are 0), so the gap is the price of revealing
nothing beyond the primary pattern.

Run (from the repository root):
    .venv/bin/python bench/suppression.py                 # 50 tables per set
    .venv/bin/python bench/suppression.py --tables 10     # quicker
Figures go to bench/results/suppression.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy

from jointstats.errors import JobError
from jointstats.protocols.suppression import (
    TableLayout,
    attacker_intervals,
    audit_release,
    complete_pattern,
    layout,
)

RESULTS = Path(__file__).parent / "results" / "suppression.json"


@dataclass(frozen=True)
class TableSet:
    name: str
    shape: tuple[int, ...]
    margins: bool
    known_total: bool
    k: int


@dataclass
class TableResult:
    primary: int
    secondary: int | None  # None: JobError (no protecting pattern)
    optimum: int | None  # None: unknown (beyond the search)
    optimum_at_least: int
    cpu_s: float
    wall_s: float


def table_sets() -> list[TableSet]:
    sets = []
    for k in (5, 10):
        for shape in ((3, 3), (4, 4), (5, 5), (6, 4)):
            sets.append(TableSet(f"{shape[0]}x{shape[1]} margins", shape, True, False, k))
        sets.append(TableSet("linked 3x3", (3, 3), False, True, k))
        sets.append(TableSet("linked 4x4", (4, 4), False, True, k))
        sets.append(TableSet("linked 3x4 margins", (3, 4), True, True, k))
    return sets


def entries(cells: np.ndarray, margins: bool) -> list[int]:
    flat = [int(v) for v in cells.ravel()]
    if not margins:
        return flat
    rows, cols = cells.sum(axis=1), cells.sum(axis=0)
    return [*flat, *map(int, rows), *map(int, cols), int(cells.sum())]


def passes(
    lay: TableLayout, values: list[int], pattern: set[int], k: int, total: int | None
) -> bool:
    released = [None if i in pattern else v for i, v in enumerate(values)]
    return audit_release(lay, released, k, total=total).passed


def optimum(
    lay: TableLayout,
    values: list[int],
    primary: set[int],
    k: int,
    total: int | None,
    limit: int,
    budget: int,
) -> tuple[int | None, int]:
    """(smallest number of extra entries that passes the audit, or None; proven lower bound).
    A subset is first tested on the entry that sank the previous one (one LP pair), which
    rejects most subsets cheaply."""
    allowed = [i for i in range(lay.n_entries) if i not in primary | lay.forced_released]
    killer: int | None = None
    tried = 0
    for size in range(limit + 1):
        for extra in itertools.combinations(allowed, size):
            tried += 1
            if tried > budget:
                return None, size
            pattern = primary | set(extra)
            released = [None if i in pattern else v for i, v in enumerate(values)]
            if killer in pattern:
                low, high = attacker_intervals(lay, released, total, entries=[killer])[killer]
                if high - low < k - 1 - 1e-6:
                    continue
            result = audit_release(lay, released, k, total=total)
            if result.passed:
                return size, size
            killer = result.narrowest_entry
    return None, limit + 1


def run_table(args: tuple[TableSet, int, int, int]) -> TableResult:
    spec, seed, limit, budget = args
    rng = np.random.default_rng(seed)
    cells = rng.poisson(rng.uniform(spec.k / 2, 2 * spec.k), size=spec.shape)
    lay = layout(spec.shape, spec.margins, spec.known_total)
    values = entries(cells, spec.margins)
    total = int(cells.sum()) if spec.known_total else None
    flags = [v < spec.k for v in values]
    primary = {i for i, p in enumerate(flags) if p} - lay.forced_released
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        pattern = complete_pattern(lay, flags, spec.k, total=total)
    except JobError:
        pattern = None
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if pattern is None:
        return TableResult(len(primary), None, None, 0, cpu, wall)
    chosen = {i for i, s in enumerate(pattern) if s}
    if not passes(lay, values, chosen, spec.k, total):
        raise SystemExit(f"complete_pattern failed the audit: {spec} seed {seed}")
    secondary = len(chosen - primary)
    best, at_least = optimum(lay, values, primary, spec.k, total, min(limit, secondary), budget)
    return TableResult(len(primary), secondary, best, at_least, cpu, wall)


def summarise(spec: TableSet, results: list[TableResult], limit: int) -> dict:
    done = [r for r in results if r.secondary is not None]
    known = [r for r in done if r.optimum is not None]
    return {
        **asdict(spec),
        "tables": len(results),
        "job_errors": len(results) - len(done),
        "primary_mean": statistics.fmean(r.primary for r in results),
        "secondary_mean": statistics.fmean(r.secondary for r in done) if done else None,
        "optimum_mean": statistics.fmean(r.optimum for r in known) if known else None,
        "optimum_known": len(known),
        "excess_mean": (
            statistics.fmean(r.secondary - r.optimum for r in known) if known else None
        ),
        "equal_to_optimum": sum(r.secondary == r.optimum for r in known),
        "cpu_ms_median": 1000 * statistics.median(r.cpu_s for r in results),
        "cpu_ms_max": 1000 * max(r.cpu_s for r in results),
        "wall_ms_median": 1000 * statistics.median(r.wall_s for r in results),
        "search_limit": limit,
        "per_table": [asdict(r) for r in results],
    }


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=50, help="tables per set")
    parser.add_argument("--max-extra", type=int, default=4, help="optimum search size cap")
    parser.add_argument("--budget", type=int, default=1500, help="subsets tried per table")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    sets = table_sets()
    jobs = [(s, 1000 * n + t, args.max_extra, args.budget) for n, s in enumerate(sets)
            for t in range(args.tables)]  # fmt: skip
    with ProcessPoolExecutor(args.workers) as pool:
        flat = list(pool.map(run_table, jobs, chunksize=4))
    summaries = [
        summarise(s, flat[n * args.tables : (n + 1) * args.tables], args.max_extra)
        for n, s in enumerate(sets)
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "scipy": scipy.__version__, "args": vars(args)}
    RESULTS.write_text(json.dumps({"meta": meta, "sets": summaries}, indent=1))
    head = "set                     k  n  err primary second. optimum(known)  =opt  cpu ms med/max"
    print(head)
    for s in summaries:
        opt = f"{fmt(s['optimum_mean'])} ({s['optimum_known']})"
        print(
            f"{s['name']:<22} {s['k']:>2} {s['tables']:>2} {s['job_errors']:>4} "
            f"{s['primary_mean']:>7.2f} {fmt(s['secondary_mean']):>7} {opt:>14} "
            f"{s['equal_to_optimum']:>5} {s['cpu_ms_median']:>7.1f}/{s['cpu_ms_max']:.0f}"
        )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()

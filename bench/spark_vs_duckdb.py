"""Benchmark: the pooled crosstab's GROUP BY over the same Parquet files through Spark (local
mode, node/spark_source.py) and through DuckDB (node/sources.py FileSource).

The query is what a node runs for a crosstab job with `by = ["region", "age"]`, `sum =
"income"` (bounds 0..2000), `[where] status = ["idp", "returnee"], age = {max = 79}` and
`[bins] age = [0, 18, 60, 80]`. Data: N rows of four small columns (region: 8 categories,
status: 3, age: int16, income: int32) in Parquet files of 1e7 rows, cached in bench/data/.

Spark is timed in a fresh process per variant, as a node's session worker meets it (one JVM per
job): `start` (JVM and session), `first` (schema and the first query, cold JIT) and the median
and minimum of the `--repeat` warm queries that follow. Variants: `c2` (the JVM's default JIT)
and `c1` (`-XX:TieredStopAtLevel=1`, quicker to warm up, slower at full speed). DuckDB: median
and minimum of `--repeat` queries (a fresh connection each, as in a node). Results are checked
equal.

Run (from the repository root):
    .venv/bin/python bench/spark_vs_duckdb.py                # 1e8 rows (3e7 if slow to make)
    .venv/bin/python bench/spark_vs_duckdb.py --rows 10000000 --repeat 2
Writes bench/results/spark_vs_duckdb.json (or --out) and prints a table; the load average (the
machine may be shared) is recorded before and after each timed section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jointstats.node.sources import FileSource, GroupedRows
from jointstats.protocols.filters import Bands, Condition

BENCH = Path(__file__).resolve().parent
FILE_ROWS = 10_000_000
REGIONS = pa.array([f"region-{i}" for i in range(8)])
STATUSES = pa.array(["idp", "returnee", "host"])
QUERY = {
    "by": ["region", "age"],
    "value": "income",
    "bounds": (0.0, 2000.0),
    "where": (Condition("status", values=("idp", "returnee")), Condition("age", high=79.0)),
    "bins": {"age": Bands("age", (0.0, 18.0, 60.0, 80.0))},
}
VARIANTS = {"c2": {}, "c1": {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1"}}


def _chunk(rng: np.random.Generator, rows: int) -> pa.Table:
    def categories(values: pa.Array, p: list[float]) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(rng.choice(len(values), rows, p=p).astype(np.int8),
                                              values)  # fmt: skip

    return pa.table(
        {
            "region": categories(REGIONS, [0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02]),
            "status": categories(STATUSES, [0.5, 0.3, 0.2]),
            "age": rng.integers(0, 100, rows, dtype=np.int16),
            "income": rng.integers(-500, 3000, rows, dtype=np.int32),
        }
    )


def make_data(rows: int, fallback: int, budget: float) -> tuple[Path, dict[str, Any]]:
    """Parquet files of N rows, reused when present; if the first file shows that N would take
    more than `budget` seconds to write, write `fallback` rows instead."""
    for n in (rows, fallback):
        folder = BENCH / "data" / f"spark-rows-{n}"
        if (folder / "_done.json").exists():
            return folder, json.loads((folder / "_done.json").read_text())
    folder = BENCH / "data" / f"spark-rows-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    rng, started, written, target = np.random.default_rng(1), time.perf_counter(), 0, rows
    while written < target:
        n = min(FILE_ROWS, target - written)
        pq.write_table(_chunk(rng, n), folder / f"part-{written // FILE_ROWS:03d}.parquet")
        written += n
        projected = (time.perf_counter() - started) / written * target
        if target == rows and projected > budget and fallback < rows:
            print(f"writing {rows:,} rows would take ~{projected:.0f} s: {fallback:,} instead")
            target = fallback
    if target != rows:
        folder = folder.rename(BENCH / "data" / f"spark-rows-{target}")
    facts = {
        "rows": target,
        "files": len(list(folder.glob("*.parquet"))),
        "bytes": sum(p.stat().st_size for p in folder.glob("*.parquet")),
        "write_seconds": round(time.perf_counter() - started, 1),
    }
    (folder / "_done.json").write_text(json.dumps(facts))  # "_": Spark skips it when reading
    return folder, facts


def _query(source: Any) -> GroupedRows:
    return source.grouped(
        QUERY["by"], QUERY["value"], QUERY["bounds"], None, QUERY["where"], QUERY["bins"]
    )


def _cells(grouped: GroupedRows) -> list[list]:
    assert grouped.sums is not None
    rows = zip(grouped.keys, grouped.counts, grouped.sums, strict=True)
    return sorted([[list(k), n, s] for k, n, s in rows], key=lambda r: str(r[0]))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def spark_child(folder: Path, variant: str, repeat: int, master: str) -> None:
    """One fresh process: start Spark, time the cold and the warm queries, print JSON."""
    from jointstats.node.spark_source import spark_source, stop_spark

    spec = {"engine": "spark", "master": master, "path": str(folder), "conf": VARIANTS[variant]}
    source = spark_source("bench", spec)
    load, mark = _load(), time.perf_counter()
    source._session  # noqa: B018 (starts the JVM and the session)
    start = time.perf_counter() - mark
    mark = time.perf_counter()
    result = _query(source)
    first = time.perf_counter() - mark
    warm = []
    for _ in range(repeat):
        mark = time.perf_counter()
        _query(source)
        warm.append(time.perf_counter() - mark)
    stop_spark()
    print(json.dumps({
        "start_seconds": round(start, 2), "first_query_seconds": round(first, 2),
        "warm_median_seconds": round(statistics.median(warm), 2),
        "warm_min_seconds": round(min(warm), 2),
        "warm_runs": [round(t, 2) for t in warm], "load_before": load, "load_after": _load(),
        "cells": _cells(result),
    }))  # fmt: skip


def time_duckdb(folder: Path, repeat: int) -> dict[str, Any]:
    source = FileSource("bench", folder, format="parquet")
    load, runs, result = _load(), [], None
    for _ in range(repeat):
        mark = time.perf_counter()
        result = _query(source)
        runs.append(time.perf_counter() - mark)
    assert result is not None
    return {
        "median_seconds": round(statistics.median(runs), 2),
        "min_seconds": round(min(runs), 2),
        "runs": [round(t, 2) for t in runs],
        "load_before": load,
        "load_after": _load(),
        "cells": _cells(result),
    }


def time_spark(folder: Path, variant: str, repeat: int, master: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--spark-child", variant, "--data", str(folder),
               "--repeat", str(repeat), "--master", master]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def same(a: list[list], b: list[list]) -> bool:
    return [r[:2] for r in a] == [r[:2] for r in b] and all(
        abs(x[2] - y[2]) <= 1e-9 * max(1.0, abs(x[2])) for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--fallback-rows", type=int, default=30_000_000)
    parser.add_argument("--write-budget", type=float, default=600.0, help="seconds")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--variants", default="c2,c1")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "spark_vs_duckdb.json")
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spark-child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spark_child:
        spark_child(args.data, args.spark_child, args.repeat, args.master)
        return
    folder, facts = make_data(args.rows, args.fallback_rows, args.write_budget)
    print(
        f"{facts['rows']:,} rows in {facts['files']} Parquet files, {facts['bytes'] / 1e9:.2f} GB"
    )
    duck = time_duckdb(folder, args.repeat)
    sparks = {v: time_spark(folder, v, args.repeat, args.master) for v in args.variants.split(",")}
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "query": "crosstab by region x age (bins 0,18,60,80), clipped sum(income), "
                 "where status in (idp, returnee) and age <= 79",
        "data": facts, "master": args.master,
        "duckdb": {k: v for k, v in duck.items() if k != "cells"},
        "spark": {v: {k: x for k, x in r.items() if k != "cells"} for v, r in sparks.items()},
        "same_result": all(same(duck["cells"], r["cells"]) for r in sparks.values()),
    }  # fmt: skip
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'engine':<9} {'start s':>7} {'first s':>7} {'median s':>8} {'min s':>6}   load")
    print(f"{'duckdb':<9} {'':>7} {'':>7} {duck['median_seconds']:>8} {duck['min_seconds']:>6}   "
          f"{duck['load_before']} -> {duck['load_after']}")  # fmt: skip
    for variant, r in report["spark"].items():
        times = f"{r['start_seconds']:>7} {r['first_query_seconds']:>7}"
        warm = f"{r['warm_median_seconds']:>8} {r['warm_min_seconds']:>6}"
        print(f"{'spark ' + variant:<9} {times} {warm}   {r['load_before']} -> {r['load_after']}")
    print(f"same result: {report['same_result']}; written to {out}")
    if not report["same_result"]:
        raise SystemExit("Spark and DuckDB disagree")


if __name__ == "__main__":
    main()

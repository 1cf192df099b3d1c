"""Benchmark: one pooled-crosstab aggregation (GROUP BY two text columns, clipped sum, sum of
weights) over the same N rows held in PostgreSQL (a table, no index) and in Parquet (DuckDB),
through the node's own sources (node/sources.py, node/sql_source.py).

Usage: python bench/sources.py [--rows 10000000] [--repeat 3] [--url postgresql://...]
Without --url a temporary PostgreSQL server is started (tests/pg.py). Writes
bench/results/sources.json and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests/pg.py

from jointstats.node.sources import FileSource, source_for  # noqa: E402

BY = ["region", "displacement_status"]
REGIONS = np.array(["north", "south", "east", "west"])
STATUSES = np.array(["idp", "returnee", "host"])
CHUNK = 1_000_000


def make_chunk(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "region": REGIONS[rng.integers(0, 4, rows)],
            "displacement_status": STATUSES[rng.integers(0, 3, rows)],
            "income": rng.integers(-500, 3000, rows),
            "w": np.round(rng.uniform(0.2, 3.0, rows), 3),
        }
    )


def load(rows: int, folder: Path, dsn: str) -> dict[str, float]:
    """The same rows into one Parquet file and one PostgreSQL table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    started = time.perf_counter()
    writer = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS households")
        conn.execute(
            "CREATE TABLE households (region text, displacement_status text, income bigint, "
            "w double precision)"
        )
        for start in range(0, rows, CHUNK):
            frame = make_chunk(rng, min(CHUNK, rows - start))
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(folder / "households.parquet", table.schema)
            writer.write_table(table)
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False)
            with conn.cursor().copy("COPY households FROM STDIN (FORMAT csv)") as copy:
                copy.write(buffer.getvalue())
        assert writer is not None
        writer.close()
        conn.execute("VACUUM ANALYZE households")
    return {"load_seconds": round(time.perf_counter() - started, 1)}


def time_source(source, repeat: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        mark = time.perf_counter()
        result = source.grouped(BY, "income", (0.0, 2000.0), "w")
        times.append(time.perf_counter() - mark)
    return statistics.median(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", help="an existing PostgreSQL database (it gets a table)")
    args = parser.parse_args()
    server = None
    if args.url:
        url, dsn = args.url, args.url
    else:
        from tests.pg import PostgresServer

        server = PostgresServer.start()
        url, dsn = server.url(user="jointstats"), server.dsn()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            facts = load(args.rows, Path(tmp), dsn)
            sources = {
                "postgresql": source_for("households", {"url": url, "table": "households"}),
                "parquet": FileSource("households", Path(tmp) / "households.parquet"),
            }
            results = {name: time_source(s, args.repeat) for name, s in sources.items()}
    finally:
        if server is not None:
            server.stop()
    pg, pq = results["postgresql"][2], results["parquet"][2]
    same = sorted(zip(pg.keys, pg.counts, strict=True)) == sorted(
        zip(pq.keys, pq.counts, strict=True)
    )
    report = {
        "rows": args.rows,
        "query": "GROUP BY region, displacement_status: count, clipped sum(income), sum(w)",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },  # fmt: skip
        **facts,
        "same_counts": same,
        "sources": {
            name: {
                "median_seconds": round(m, 3),
                "runs": [round(t, 3) for t in times],
                "rows_per_second": round(args.rows / m),
            }  # fmt: skip
            for name, (m, times, _) in results.items()
        },
    }
    out = Path(__file__).parent / "results" / "sources.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.rows:,} rows, {report['query']}; load {facts['load_seconds']} s")
    print(f"{'source':<12} {'median s':>9} {'rows/s':>14}   runs")
    for name, entry in report["sources"].items():
        print(
            f"{name:<12} {entry['median_seconds']:>9.3f} {entry['rows_per_second']:>14,}   "
            f"{entry['runs']}"
        )
    print(f"same counts: {same}; written {out}")


if __name__ == "__main__":
    main()

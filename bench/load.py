"""Sustained load: pooled crosstabs on 3 nodes, jobs per minute and memory of every process.

Starts a federation on loopback (coordinator + 3 data nodes, 1e5 rows each by default), keeps
`--in-flight` jobs submitted at all times for `--seconds`, and samples the resident memory of
the coordinator and of each node (with its session workers) twice a second. Writes
bench/results/load.json and prints a short table.

    .venv/bin/python bench/load.py [--seconds 60] [--in-flight 4] [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil

from jointstats.demo import AGENCIES, POOLED_JOB, write_demo_data
from jointstats.local import LocalFederation, LocalNode

RESULTS = Path(__file__).parent / "results"


def _tree_rss_mib(pid: int) -> float:
    try:
        process = psutil.Process(pid)
        procs = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


def _sample_memory(fed: LocalFederation, stop: threading.Event, samples: dict) -> None:
    while not stop.is_set():
        for name, process in fed.processes.items():
            samples.setdefault(name, []).append(_tree_rss_mib(process.pid))
        time.sleep(0.5)


def _worker(fed: LocalFederation, deadline: float, latencies: list, failures: list) -> None:
    assert fed.client is not None
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            fed.client.run(POOLED_JOB, timeout=300)
            latencies.append(time.monotonic() - started)
        except Exception as exc:  # a benchmark records failures instead of stopping
            failures.append(str(exc))


def run(seconds: float, in_flight: int, rows: int, workdir: Path) -> dict:
    files = write_demo_data(workdir / "data", rows)
    nodes = [LocalNode(a, {"households": files[a]}) for a in AGENCIES]
    latencies: list[float] = []
    failures: list[str] = []
    samples: dict[str, list[float]] = {}
    with LocalFederation(nodes, workdir / "fed") as fed:
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_memory, args=(fed, stop, samples))
        sampler.start()
        started = time.monotonic()
        deadline = started + seconds
        threads = [
            threading.Thread(target=_worker, args=(fed, deadline, latencies, failures))
            for _ in range(in_flight)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
    ordered = sorted(latencies)
    return {
        "machine": {"nproc": psutil.cpu_count(), "python": platform.python_version()},
        "seconds": round(elapsed, 1),
        "in_flight": in_flight,
        "rows_per_node": rows,
        "jobs_done": len(latencies),
        "jobs_failed": len(failures),
        "failures": failures[:5],
        "jobs_per_minute": round(60 * len(latencies) / elapsed, 1),
        "latency_p50": round(statistics.median(ordered), 3) if ordered else None,
        "latency_p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3) if ordered else None,
        "rss_mib": {
            name: {
                "first": round(values[0], 1),
                "last": round(values[-1], 1),
                "peak": round(max(values), 1),
            }
            for name, values in samples.items()
            if values
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jointstats-load"))
    args = parser.parse_args()
    report = run(args.seconds, args.in_flight, args.rows, args.workdir)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(report, indent=2))
    print(
        f"{report['jobs_done']} jobs in {report['seconds']} s = {report['jobs_per_minute']} "
        f"jobs/min ({report['in_flight']} in flight, {report['jobs_failed']} failed); "
        f"latency p50 {report['latency_p50']} s, p95 {report['latency_p95']} s"
    )
    print(f"{'process':<12} {'first MiB':>10} {'last MiB':>10} {'peak MiB':>10}")
    for name, rss in report["rss_mib"].items():
        print(f"{name:<12} {rss['first']:>10} {rss['last']:>10} {rss['peak']:>10}")


if __name__ == "__main__":
    main()

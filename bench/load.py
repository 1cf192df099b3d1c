"""Sustained load: pooled crosstabs on 3 nodes, jobs per minute and memory of every process.

Starts a federation on loopback (coordinator + 3 data nodes, 1e5 rows each by default), keeps
`--in-flight` jobs submitted at all times for `--seconds`, and samples the memory of the
coordinator and of each node's process tree (the node, its fork server and session workers)
twice a second. "At rest" is the tree --settle seconds after start, before any job. Memory is
given as RSS summed over the tree (pages shared between a fork server and its forked workers
count once per process) and as PSS (shared pages split between the processes that map them:
what the tree really costs). Records the load average (`uptime`) before and after. Writes
bench/results/load.json and prints a short table.

    .venv/bin/python bench/load.py [--seconds 60] [--in-flight 4] [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import threading
import time
from pathlib import Path

import psutil

from jointstats.demo import AGENCIES, POOLED_JOB, write_demo_data
from jointstats.local import LocalFederation, LocalNode

RESULTS = Path(__file__).parent / "results"


def _tree_mib(pid: int) -> tuple[float, float]:
    """RSS and PSS (MiB) summed over the process and its descendants."""
    rss = pss = 0
    try:
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    except psutil.NoSuchProcess:
        pass
    return rss / 2**20, pss / 2**20


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the process and its descendants, including reaped children (forked
    session workers are reaped by their fork server, so their time lands there)."""
    total = 0.0
    try:
        process = psutil.Process(pid)
        for p in [process, *process.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return total


def _sample_memory(fed: LocalFederation, stop: threading.Event, samples: dict) -> None:
    while not stop.is_set():
        for name, process in fed.processes.items():
            samples.setdefault(name, []).append(_tree_mib(process.pid))
        time.sleep(0.5)


def _summary(values: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "rss_last": round(values[-1][0], 1),
        "rss_peak": round(max(v[0] for v in values), 1),
        "pss_last": round(values[-1][1], 1),
        "pss_peak": round(max(v[1] for v in values), 1),
    }


def _worker(fed: LocalFederation, deadline: float, latencies: list, failures: list) -> None:
    assert fed.client is not None
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            fed.client.run(POOLED_JOB, timeout=300)
            latencies.append(time.monotonic() - started)
        except Exception as exc:  # a benchmark records failures instead of stopping
            failures.append(str(exc))


def run(seconds: float, in_flight: int, rows: int, workdir: Path, settle: float) -> dict:
    files = write_demo_data(workdir / "data", rows)
    nodes = [LocalNode(a, {"households": files[a]}) for a in AGENCIES]
    latencies: list[float] = []
    failures: list[str] = []
    samples: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    with LocalFederation(nodes, workdir / "fed") as fed:
        time.sleep(settle)  # imports done, spare workers forked: the node at rest
        at_rest = {name: _tree_mib(p.pid) for name, p in fed.processes.items()}
        cpu_before = {name: _tree_cpu(p.pid) for name, p in fed.processes.items()}
        cpu_before["client"] = sum(psutil.Process().cpu_times()[:2])  # this process alone
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
        time.sleep(1.0)  # the last workers are reaped
        cpu_after = {name: _tree_cpu(p.pid) for name, p in fed.processes.items()}
        cpu_after["client"] = sum(psutil.Process().cpu_times()[:2])
    jobs = max(len(latencies), 1)
    cpu_per_job = {n: round((cpu_after[n] - cpu_before[n]) / jobs, 3) for n in cpu_before}
    ordered = sorted(latencies)
    return {
        "machine": {"nproc": psutil.cpu_count(), "python": platform.python_version()},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(elapsed, 1),
        "in_flight": in_flight,
        "rows_per_node": rows,
        "jobs_done": len(latencies),
        "jobs_failed": len(failures),
        "failures": failures[:5],
        "jobs_per_minute": round(60 * len(latencies) / elapsed, 1),
        # CPU seconds per job by process tree: the ceiling on this machine is
        # 60 * cpus / total jobs per minute, whatever the load
        "cpu_seconds_per_job": cpu_per_job | {"total": round(sum(cpu_per_job.values()), 3)},
        "latency_p50": round(statistics.median(ordered), 3) if ordered else None,
        "latency_p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3) if ordered else None,
        "at_rest_mib": {
            name: {"rss": round(rss, 1), "pss": round(pss, 1)}
            for name, (rss, pss) in at_rest.items()
        },
        "under_load_mib": {name: _summary(values) for name, values in samples.items() if values},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jointstats-load"))
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before 'at rest'")
    args = parser.parse_args()
    shutil.rmtree(args.workdir / "fed", ignore_errors=True)  # fresh state: first jobs build caches
    report = run(args.seconds, args.in_flight, args.rows, args.workdir, args.settle)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(report, indent=2))
    print(
        f"{report['jobs_done']} jobs in {report['seconds']} s = {report['jobs_per_minute']} "
        f"jobs/min ({report['in_flight']} in flight, {report['jobs_failed']} failed); "
        f"latency p50 {report['latency_p50']} s, p95 {report['latency_p95']} s"
    )
    print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']}")
    per_job = report["cpu_seconds_per_job"]
    ceiling = 60 * (os.cpu_count() or 1) / max(per_job["total"], 1e-9)
    print("CPU s per job: " + ", ".join(f"{k} {v}" for k, v in per_job.items())
          + f" (ceiling on {os.cpu_count()} idle CPUs: {ceiling:.0f} jobs/min)")  # fmt: skip
    print(f"{'tree':<12} {'rest RSS':>9} {'rest PSS':>9} {'peak RSS':>9} {'peak PSS':>9}  MiB")
    for name, rest in report["at_rest_mib"].items():
        peak = report["under_load_mib"].get(name, {})
        print(
            f"{name:<12} {rest['rss']:>9} {rest['pss']:>9} "
            f"{peak.get('rss_peak', ''):>9} {peak.get('pss_peak', ''):>9}"
        )


if __name__ == "__main__":
    main()

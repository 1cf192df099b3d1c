"""Benchmark: a pooled crosstab through the real stack against plaintext pandas on pooled CSVs.

For each size N (rows per node; three nodes unhcr, drc, nrc, each with one synthetic CSV
`households.csv`: region, displacement_status, sex, income) it measures, by wall clock:

- pandas: read the three CSVs (needed columns only), concatenate, group by region x
  displacement_status, count and clipped sum of income: the plaintext answer as if pooled
  (median of --repeats runs).
- latency: with a LocalFederation already running (coordinator + 3 node processes, TLS, gRPC,
  MPyC), submit the job and wait for the released result, --repeats times: the first job builds
  reads the CSVs and starts each node's columnar copy (node/csv_cache.py, built by a detached
  process); it is reported apart, the bench waits for the copies, and the figure is the median
  of the later jobs, with each node's phase timings (local = DuckDB GROUP BY,
  connect = MPC session set-up, mpc = the MPC).
- local: `jointstats local JOB --node ... --out ...` as a subprocess, start-up included (once),
  with its phases from LocalFederation's clock (cli_imports, keys, coordinator_port,
  nodes_connected, job, stop, after_stop) and each node's session phases.
Every timing records the load average (`uptime`) right after it.

On a shared machine other work skews every figure: before each timed section the script waits
(up to --idle-timeout) until the CPUs are nearly idle, and afterwards measures the share of the
CPUs that other processes took meanwhile (from /proc); above --foreign-limit it redoes the timing
(up to --attempts tries). Both shares are recorded with every timing.

Every released table is checked against pandas: unsuppressed counts and sums equal, and exactly
the cells below min_cell suppressed. The run fails loudly otherwise.

Run (from the repository root):
    .venv/bin/python bench/pooled_crosstab.py                  # N = 1e6 and 1e7
    .venv/bin/python bench/pooled_crosstab.py --quick          # N = 1e5 only
    .venv/bin/python bench/pooled_crosstab.py --rows 1000000 --repeats 5
Synthetic CSVs are cached in bench/data/ (git-ignored); figures go to
bench/results/pooled_crosstab.json. Fork servers import the code on disk when a node starts, so
to time one commit while the checkout is being edited, run with PYTHONPATH pointing at an
installed-layout copy of it (jointstats/ with node/, coordinator/, protocols/ inside); the JSON
records which jointstats ran. Targets: latency <= 1.0x pandas at 1e6 rows per node,
<= 0.3x at 1e7.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import tomli_w

from jointstats.local import TIMINGS_ENV, LocalFederation, LocalNode

BENCH = Path(__file__).resolve().parent
DATA = BENCH / "data"
RESULTS = BENCH / "results" / "pooled_crosstab.json"
NODES = ("unhcr", "drc", "nrc")
DATASET = "households"
BY = ["region", "displacement_status"]
DOMAINS = {
    "region": ["north", "south", "east", "west"],
    "displacement_status": ["idp", "returnee", "host"],
}
SEXES = ["female", "male"]
BOUNDS = (0, 100_000)
MIN_CELL = 10
TARGETS = {1_000_000: 1.0, 10_000_000: 0.3}
JOB: dict[str, Any] = {
    "kind": "crosstab",
    "dataset": DATASET,
    "by": BY,
    "sum": "income",
    "bounds": list(BOUNDS),
    "domains": DOMAINS,
    "disclosure": {"min_cell": MIN_CELL},
}


@dataclass(frozen=True)
class Settings:
    repeats: int = 3
    pause: float = 2.0  # seconds before each latency run
    idle_below: float = 0.15  # wait until the machine's CPUs are at most this busy (0: don't)
    idle_timeout: float = 600.0
    foreign_limit: float = 0.10  # redo a timing if other processes used more of the CPUs
    attempts: int = 5


@dataclass(frozen=True)
class Timing:
    seconds: float
    value: Any
    busy_before: float | None  # share of the CPUs busy just before starting
    foreign: float | None  # share of the CPUs other processes used (or stolen) meanwhile
    attempts: int

    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # `uptime` load right after

    def record(self) -> dict[str, Any]:
        keys = ("seconds", "busy_before", "foreign", "attempts")
        record = {f"cpu_{k}" if k != "seconds" else k: getattr(self, k) for k in keys}
        return record | {"loadavg": [round(x, 2) for x in self.loadavg]}


# --- a quiet machine ------------------------------------------------------------------------
# The machine may be shared: before each timed section wait until its CPUs are idle, and
# afterwards measure how much CPU other processes (not this one or its descendants) took
# meanwhile; above --foreign-limit the timing is redone.

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_line() -> list[int]:
    """user nice system idle iowait irq softirq steal, in jiffies over all CPUs."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over the next `seconds` (None where /proc/stat is missing)."""
    try:
        before = _stat_line()
        time.sleep(seconds)
        after = _stat_line()
    except OSError:
        return None
    idle = (after[3] + after[4]) - (before[3] + before[4])
    return 1.0 - idle / max(sum(after) - sum(before), 1)


def wait_for_quiet(settings: Settings) -> float | None:
    """Wait until other work leaves the CPUs idle (up to the timeout); the last busy share."""
    if settings.idle_below <= 0:
        return None
    deadline = time.monotonic() + settings.idle_timeout
    busy = cpu_busy()
    while busy is not None and busy > settings.idle_below and time.monotonic() < deadline:
        busy = cpu_busy()
    if busy is not None and busy > settings.idle_below:
        print(f"  warning: CPUs still {busy:.0%} busy with other work; timing anyway")
    return busy


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU jiffies of the process and its reaped children)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return table


def _mine(tables: list[dict[int, tuple[int, int]]]) -> set[int]:
    """This process and its descendants, in any of the snapshots."""
    parent = {pid: row[0] for table in tables for pid, row in table.items()}
    mine = {os.getpid()}
    for pid in parent:
        chain, node = [], pid
        while node > 1 and node not in mine and len(chain) < 64:
            chain.append(node)
            node = parent.get(node, 0)
        if node in mine:
            mine.update(chain)
    return mine


def _snapshot() -> tuple[dict[int, tuple[int, int]], int, float] | None:
    try:
        return _processes(), _stat_line()[7], time.monotonic()
    except OSError:
        return None


def foreign_share(before: Any, after: Any) -> float | None:
    """Share of the CPUs used by other processes, or stolen by the hypervisor, in between."""
    if before is None or after is None:
        return None
    (procs0, steal0, t0), (procs1, steal1, t1) = before, after
    mine = _mine([procs0, procs1])
    ticks = steal1 - steal0
    ticks += sum(
        row[1] - procs0.get(pid, (0, 0))[1] for pid, row in procs1.items() if pid not in mine
    )
    ticks -= sum(row[1] for pid, row in procs0.items() if pid not in procs1 and pid not in mine)
    return max(ticks, 0) / ((t1 - t0) * TICKS * (os.cpu_count() or 1))


def timed(run: Callable[[], Any], settings: Settings, label: str) -> Timing:
    """Time `run()` on a quiet machine; redo it while other processes took too much CPU."""
    attempt = 0
    while True:
        attempt += 1
        busy = wait_for_quiet(settings)
        before = _snapshot()
        started = time.perf_counter()
        value = run()
        seconds = time.perf_counter() - started
        foreign = foreign_share(before, _snapshot())
        timing = Timing(seconds, value, busy, foreign, attempt, os.getloadavg())
        limit = settings.foreign_limit
        if foreign is None or limit <= 0 or foreign <= limit or attempt >= settings.attempts:
            return timing
        print(f"  {label}: {seconds:.2f} s, but other processes took {foreign:.0%} of the CPUs")


# --- synthetic data -------------------------------------------------------------------------


def _categorical(rng: np.random.Generator, labels: list[str], rows: int) -> pa.Array:
    weights = rng.dirichlet(np.full(len(labels), 4.0))
    return pa.array(labels).take(pa.array(rng.choice(len(labels), rows, p=weights)))


def _node_table(rows: int, seed: int) -> pa.Table:
    """One agency's households; each agency has its own mix of regions and statuses."""
    rng = np.random.default_rng(seed)
    income = np.rint(rng.lognormal(9.3, 1.1, rows)).astype(np.int64)  # some above the bound
    columns = {column: _categorical(rng, labels, rows) for column, labels in DOMAINS.items()}
    return pa.table({**columns, "sex": _categorical(rng, SEXES, rows), "income": income})


def node_csv(rows: int, node: str) -> Path:
    """The cached CSV of `node` at size `rows` (generated once, written atomically)."""
    path = DATA / f"rows-{rows}" / node / f"{DATASET}.csv"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".csv.part")
    seed = NODES.index(node) * 1_000_003 + rows
    pacsv.write_csv(_node_table(rows, seed), part, pacsv.WriteOptions(quoting_style="none"))
    part.rename(path)
    return path


def warm_page_cache(files: dict[str, Path]) -> None:
    """Read every file once, so that no timed section waits for the disk."""
    for path in files.values():
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


def dataset_files(rows: int) -> dict[str, Path]:
    started = time.perf_counter()
    files = {node: node_csv(rows, node) for node in NODES}
    warm_page_cache(files)
    mib = sum(f.stat().st_size for f in files.values()) / 2**20
    print(f"  data: {mib:.0f} MiB in 3 CSVs ready in {time.perf_counter() - started:.1f} s")
    return files


# --- plaintext baseline ---------------------------------------------------------------------


def pandas_crosstab(files: dict[str, Path]) -> pd.DataFrame:
    """Read, pool and aggregate in pandas: the cell table (count, clipped sum)."""
    frames = [pd.read_csv(f, usecols=[*BY, "income"]) for f in files.values()]
    pooled = pd.concat(frames, ignore_index=True)
    pooled["income"] = pooled["income"].clip(*BOUNDS)
    return pooled.groupby(BY).agg(count=("income", "size"), sum=("income", "sum"))


def pandas_baseline(
    files: dict[str, Path], settings: Settings
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Time `pandas_crosstab` `repeats` times; the truth table and the median seconds."""
    runs = [
        timed(lambda: pandas_crosstab(files), settings, f"pandas run {i + 1}")
        for i in range(settings.repeats)
    ]
    median = statistics.median(r.seconds for r in runs)
    return runs[-1].value, {"median_seconds": median, "runs": [r.record() for r in runs]}


# --- checks ---------------------------------------------------------------------------------


def check_released(released: pd.DataFrame, truth: pd.DataFrame, label: str) -> None:
    """Released counts and sums equal pandas' where not suppressed; suppressed iff < min_cell."""
    cells = released.set_index(BY)
    expected = truth.reindex(cells.index, fill_value=0)
    should_suppress = expected["count"] < MIN_CELL
    wrong_flags = cells.index[cells["suppressed"] != should_suppress]
    if len(wrong_flags):
        raise AssertionError(f"{label}: wrong suppression for cells {list(wrong_flags)}")
    shown = ~cells["suppressed"]
    got = cells.loc[shown, "count"].astype("int64")
    if not got.equals(expected.loc[shown, "count"].astype("int64")):
        diff = pd.DataFrame({"released": got, "pandas": expected.loc[shown, "count"]})
        raise AssertionError(f"{label}: released counts differ from pandas:\n{diff}")
    sums = np.asarray(cells.loc[shown, "sum"], dtype=float)
    if not np.allclose(sums, expected.loc[shown, "sum"].to_numpy(float), rtol=0, atol=0.011):
        raise AssertionError(f"{label}: released sums differ from pandas")


# --- federation -----------------------------------------------------------------------------


def timed_job(
    federation: LocalFederation, truth: pd.DataFrame, label: str, settings: Settings
) -> dict[str, Any]:
    client = federation.client
    assert client is not None
    time.sleep(settings.pause)  # let each node's next warm session worker finish importing
    timing = timed(lambda: client.run(JOB, timeout=1800.0), settings, label)
    check_released(timing.value.table, truth, label)
    print(f"  {label}: {timing.seconds:.2f} s")
    return timing.record() | {"timings_by_node": timing.value.metadata.get("timings_by_node")}


def federation_latency(
    files: dict[str, Path], truth: pd.DataFrame, settings: Settings
) -> dict[str, Any]:
    """Start a federation once, then time submit -> released result `repeats` times."""
    nodes = [LocalNode(name, {DATASET: path}) for name, path in files.items()]
    workdir = Path(tempfile.mkdtemp(prefix="jointstats-bench-"))
    started = time.perf_counter()
    try:
        with LocalFederation(nodes, workdir, session_timeout=1800.0) as federation:
            startup = time.perf_counter() - started
            runs = [timed_job(federation, truth, "latency run 1", settings)]
            built = wait_for_copies(workdir, list(files))
            runs += [
                timed_job(federation, truth, f"latency run {i + 1}", settings)
                for i in range(1, settings.repeats)
            ]
    except BaseException:
        print(f"  the federation's logs are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    # The first job builds each node's columnar copy of its CSV (node/csv_cache.py); the
    # later ones read it: a running federation's steady state is the median of the later runs.
    later = [r["seconds"] for r in runs[1:]] or [runs[0]["seconds"]]
    return {
        "startup_seconds": startup,
        "copies_built_seconds_after_first_job": built,
        "first_seconds": runs[0]["seconds"],
        "median_seconds": statistics.median(later),
        "runs": runs,
    }


def wait_for_copies(workdir: Path, nodes: list[str], limit: float = 1800.0) -> float:
    """After the first job, each node's detached builder writes the CSV's columnar copy;
    later runs measure the steady state, so wait for every copy (seconds waited)."""
    started = time.perf_counter()
    while not all(list((workdir / n / "cache").glob("*.json")) for n in nodes):
        if time.perf_counter() - started > limit:
            raise RuntimeError(f"no columnar copies after {limit:.0f} s (see {workdir})")
        time.sleep(0.1)
    waited = time.perf_counter() - started
    print(f"  columnar copies built {waited:.1f} s after the first job")
    return waited


def phase_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per node and phase, the median over the later runs (the first reads the CSVs)."""
    phases: dict[str, dict[str, list[float]]] = {}
    for run in runs[1:] or runs:
        for node, timings in run["timings_by_node"].items():
            for phase, seconds in timings.items():
                phases.setdefault(node, {}).setdefault(phase, []).append(seconds)
    return {
        node: {phase: statistics.median(values) for phase, values in phases[node].items()}
        for node in sorted(phases, key=lambda n: NODES.index(n) if n in NODES else len(NODES))
    }


def cli_executable() -> list[str]:
    script = Path(sys.executable).with_name("jointstats")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jointstats.cli"]


def run_cli(command: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode != 0:
        raise RuntimeError(f"jointstats local failed ({done.returncode}):\n{done.stderr}")


def local_end_to_end(
    files: dict[str, Path], truth: pd.DataFrame, settings: Settings
) -> dict[str, Any]:
    """Time `jointstats local JOB --node ... --out ...` (start-up included) and check its CSV."""
    with tempfile.TemporaryDirectory(prefix="jointstats-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.toml", Path(tmp) / "out.csv"
        clock_file = Path(tmp) / "clock.json"
        job_file.write_text(tomli_w.dumps(JOB))
        command = [*cli_executable(), "local", str(job_file), "--out", str(out_file)]
        for node, path in files.items():
            command += ["--node", f"{node}={path}"]
        launched: list[float] = []

        def run() -> None:
            launched.append(time.time())
            run_cli(command, {TIMINGS_ENV: str(clock_file)})

        timing = timed(run, settings, "jointstats local")
        released = pd.read_csv(out_file, keep_default_na=False, na_values=[""])
        meta = json.loads(out_file.with_suffix(".meta.json").read_text())
        phases = local_phases(launched[-1], json.loads(clock_file.read_text()), timing.seconds)
    released["suppressed"] = released["suppressed"].astype(str).str.lower() == "true"
    check_released(released, truth, "jointstats local")
    return timing.record() | {
        "command": " ".join(command),
        "phases": phases,
        "timings_by_node": meta.get("timings_by_node"),
    }


def local_phases(launched: float, clock: dict[str, float], seconds: float) -> dict[str, float]:
    """Where `jointstats local`'s wall time goes, from LocalFederation's phase clock."""
    marks = [("cli_imports", launched, clock["created"]),
             ("keys", clock["created"], clock["keys"]),
             ("coordinator_port", clock["keys"], clock["spawned"]),
             ("nodes_connected", clock["spawned"], clock["nodes_ready"]),
             ("job", clock["nodes_ready"], clock["stop"]),
             ("stop", clock["stop"], clock["stopped"])]  # fmt: skip
    phases = {name: round(end - start, 3) for name, start, end in marks}
    phases["after_stop"] = round(seconds - sum(phases.values()), 3)  # print, write, exit
    return phases


# --- one size, the report -------------------------------------------------------------------


def bench_size(rows: int, settings: Settings) -> dict[str, Any]:
    print(f"N = {rows:,} rows per node")
    files = dataset_files(rows)
    truth, pandas = pandas_baseline(files, settings)
    pandas_seconds = pandas["median_seconds"]
    print(f"  pandas: {pandas_seconds:.2f} s (median of {settings.repeats})")
    latency = federation_latency(files, truth, settings)
    # one-shot runs vary more than later jobs (start-up races the imports): median of repeats
    runs = sorted(
        (local_end_to_end(files, truth, settings) for _ in range(settings.repeats)),
        key=lambda run: run["seconds"],
    )
    local = runs[len(runs) // 2]
    shown = ", ".join(f"{run['seconds']:.2f}" for run in runs)
    print(f"  jointstats local: {local['seconds']:.2f} s (median of {shown})")
    return {
        "rows_per_node": rows,
        "csv_bytes": {node: path.stat().st_size for node, path in files.items()},
        "pandas_seconds": pandas_seconds,
        "pandas_runs": pandas["runs"],
        "latency": latency,
        "first_over_pandas": latency["first_seconds"] / pandas_seconds,
        "phase_medians_by_node": phase_medians(latency["runs"]),
        "local_seconds": local["seconds"],
        "local": local,
        "local_runs_seconds": [run["seconds"] for run in runs],
        "latency_over_pandas": latency["median_seconds"] / pandas_seconds,
        "local_over_pandas": local["seconds"] / pandas_seconds,
        "target_latency_over_pandas": TARGETS.get(rows),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version() -> dict[str, Any]:
    """Which jointstats ran (a snapshot on PYTHONPATH, or the editable checkout) and its commit."""
    module = Path(sys.modules[LocalFederation.__module__].__file__ or ".").resolve().parent
    git = ["git", "-C", str(BENCH), "rev-parse", "HEAD"]
    head = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    return {"jointstats_dir": str(module), "pythonpath": os.environ.get("PYTHONPATH"), "head": head}


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def print_table(sizes: list[dict[str, Any]]) -> None:
    header = f"{'rows/node':>12} {'pandas s':>9} {'latency s':>10} {'local s':>8}"
    print(f"\n{header} {'lat/pandas':>10} {'local/pandas':>12} {'target':>7}")
    for s in sizes:
        target = s["target_latency_over_pandas"]
        mark = "" if target is None else f"<={target:.1f}x"
        verdict = ""
        if target is not None:
            verdict = " ok" if s["latency_over_pandas"] <= target else " MISS"
        print(
            f"{s['rows_per_node']:>12,} {s['pandas_seconds']:>9.2f} "
            f"{s['latency']['median_seconds']:>10.2f} {s['local_seconds']:>8.2f} "
            f"{s['latency_over_pandas']:>9.2f}x {s['local_over_pandas']:>11.2f}x {mark:>7}{verdict}"
        )
    for s in sizes:
        latency = s["latency"]
        print(
            f"\nat {s['rows_per_node']:,} rows/node: first job {latency['first_seconds']:.2f} s "
            f"(reads the CSVs), later jobs median {latency['median_seconds']:.2f} s"
        )
        print("  phase medians of the later jobs (s):")
        for node, phases in s["phase_medians_by_node"].items():
            print(f"  {node:>8}: " + "  ".join(f"{k}={v:.2f}" for k, v in phases.items()))
        print("  jointstats local (s): " + "  ".join(
            f"{k}={v:.2f}" for k, v in s["local"]["phases"].items()))  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--quick", action="store_true", help="100,000 rows per node only")
    parser.add_argument("--repeats", type=int, default=3, help="pandas and latency runs per size")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds before each latency run")
    parser.add_argument(
        "--idle-below",
        type=float,
        default=0.15,
        help="before each timed section, wait until the CPUs are at most this busy (0: don't)",
    )
    parser.add_argument("--idle-timeout", type=float, default=600.0, help="longest such wait (s)")
    parser.add_argument(
        "--foreign-limit",
        type=float,
        default=0.10,
        help="redo a timing if other processes took more than this share of the CPUs (0: never)",
    )
    parser.add_argument("--attempts", type=int, default=5, help="most tries per timing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        args.repeats,
        args.pause,
        args.idle_below,
        args.idle_timeout,
        args.foreign_limit,
        args.attempts,
    )
    sizes = [100_000] if args.quick else args.rows
    report = {"machine": machine(), "code": code_version(), "job": JOB}
    report["settings"] = vars(args) | {"out": str(args.out)}
    results: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for rows in sizes:
        results.append(bench_size(rows, settings))
        args.out.write_text(json.dumps(report | {"sizes": results}, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

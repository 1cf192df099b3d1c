"""Benchmark: a linked crosstab through the real stack against OpenMined PSI (cardinality only).

For each size N (records per side; N/2 of them in both), with a registry at node `ministry`
(national_id, district: 6 categories) and a survey at node `survey` (national_id, employment:
4 categories, weight), and a compute-only helper `jips`, all on this machine:

- ours: with a LocalFederation already running (coordinator + 3 node processes, mutual TLS,
  gRPC relay, MPyC), submit the linked job (weighted) and wait for the released table: wall
  clock latency, each node's phase timings (normalize, tag, match, share, product, disclose,
  release), and peak RSS of each node's process tree (node + session worker, psutil, sampled
  every 50 ms). The released table is checked against a pandas merge + groupby.
- local: `jointstats local JOB --node ministry=... --node survey=... --node jips --out ...` as
  a subprocess, start-up included (once), with its phases (LocalFederation's clock) and each
  node's session phases; the issue-13 target is this figure <= 0.1 x OpenMined's at 1e5.
- OpenMined PSI (`openmined-psi`, ECDH-PSI with a Golomb-compressed set, fpr 1e-9): client and
  server in this one process, intersection *cardinality* only of the same ids: setup message,
  request, response, size. The same run, one after the other, never concurrently.

Run (from the repository root):
    .venv/bin/pip install --no-deps openmined-psi==2.0.6   # pins protobuf 6; works with ours
    .venv/bin/python bench/linked_crosstab.py                # N = 1e5 and 1e6
    .venv/bin/python bench/linked_crosstab.py --sizes 100000 --repeats 3
    .venv/bin/python bench/linked_crosstab.py --skip-openmined
Synthetic CSVs are cached in bench/data/ (git-ignored); figures go to
bench/results/linked_crosstab.json. Targets: ours <= 1/4 of OpenMined's time at 1e5, <= 1/10 at 1e6.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import tomli_w

from jointstats.local import TIMINGS_ENV, LocalFederation, LocalNode

BENCH = Path(__file__).resolve().parent
DATA = BENCH / "data"
RESULTS = BENCH / "results" / "linked_crosstab.json"
DISTRICTS = [f"d{i}" for i in range(1, 7)]
EMPLOYMENT = ["employed", "unemployed", "inactive", "student"]
MIN_CELL = 10
TARGETS = {100_000: 0.25, 1_000_000: 0.10}
JOB: dict[str, Any] = {
    "kind": "linked_crosstab",
    "helper": "jips",
    "left": {
        "node": "ministry",
        "dataset": "idp_registry",
        "key": "national_id",
        "by": ["district"],
    },
    "right": {
        "node": "survey",
        "dataset": "household_survey",
        "key": "national_id",
        "by": ["employment"],
        "weight": "weight",
    },
    "domains": {"district": DISTRICTS, "employment": EMPLOYMENT},
    "disclosure": {"min_cell": MIN_CELL},
}


# --- synthetic data -------------------------------------------------------------------------


def _ids(numbers: np.ndarray) -> pa.Array:
    return pa.array(np.char.add("ID", np.char.zfill(numbers.astype(str), 10)))


def dataset_files(rows: int) -> dict[str, Path]:
    """Registry and survey CSVs of `rows` records each, rows/2 people in both (cached)."""
    folder = DATA / f"linked-{rows}"
    files = {
        "ministry": folder / "ministry" / "idp_registry.csv",
        "survey": folder / "survey" / "household_survey.csv",
    }
    if all(f.exists() for f in files.values()):
        return files
    rng = np.random.default_rng(rows)
    people = rng.permutation(4 * rows)
    shared = rows // 2
    registry = pa.table(
        {
            "national_id": _ids(people[:rows]),
            "district": pa.array(
                rng.choice(DISTRICTS, rows, p=[0.4, 0.3, 0.2, 0.09, 0.009, 0.001])
            ),
        }
    )
    survey_people = np.concatenate([people[rows - shared : rows], people[rows : 2 * rows - shared]])
    survey = pa.table(
        {
            "national_id": _ids(rng.permutation(survey_people)),
            "employment": pa.array(rng.choice(EMPLOYMENT, rows, p=[0.5, 0.3, 0.19, 0.01])),
            "weight": pa.array(rng.uniform(0.5, 300.0, rows).round(3)),
        }
    )
    (DATA / ".gitignore").parent.mkdir(parents=True, exist_ok=True)
    (DATA / ".gitignore").write_text("*\n")
    for name, table in (("ministry", registry), ("survey", survey)):
        files[name].parent.mkdir(parents=True, exist_ok=True)
        part = files[name].with_suffix(".part")
        pacsv.write_csv(table, part, pacsv.WriteOptions(quoting_style="none"))
        part.rename(files[name])
    return files


def truth(files: dict[str, Path]) -> pd.DataFrame:
    left = pd.read_csv(files["ministry"], dtype={"national_id": str})
    right = pd.read_csv(files["survey"], dtype={"national_id": str})
    merged = left.merge(right, on="national_id")
    return merged.groupby(["district", "employment"]).agg(
        count=("weight", "size"), weighted=("weight", "sum")
    )


def check_released(table: pd.DataFrame, expected: pd.DataFrame, label: str) -> None:
    cells = table.set_index(["district", "employment"])
    want = expected.reindex(cells.index, fill_value=0)
    # every cell below min_cell is hidden; secondary suppression may hide more (DESIGN 5.3)
    if (~cells["suppressed"] & (want["count"] < MIN_CELL)).any():
        raise AssertionError(f"{label}: a cell below min_cell was released")
    shown = ~cells["suppressed"]
    if not (cells.loc[shown, "count"].astype("int64") == want.loc[shown, "count"]).all():
        raise AssertionError(f"{label}: released counts differ from pandas")
    got = cells.loc[shown, "weighted_count"].to_numpy(float)
    if not np.allclose(got, want.loc[shown, "weighted"].to_numpy(float), rtol=0, atol=1e-3):
        raise AssertionError(f"{label}: released weighted counts differ from pandas")


# --- OpenMined PSI --------------------------------------------------------------------------


def openmined_cardinality(files: dict[str, Path]) -> dict[str, Any]:
    """Intersection size of the same ids with OpenMined PSI, client and server in-process."""
    import private_set_intersection.python as psi

    client_ids = pd.read_csv(files["survey"], usecols=["national_id"], dtype=str)
    server_ids = pd.read_csv(files["ministry"], usecols=["national_id"], dtype=str)
    client_items = client_ids["national_id"].tolist()
    server_items = server_ids["national_id"].tolist()
    started = time.perf_counter()
    client = psi.client.CreateWithNewKey(True)  # reveal_intersection=True: size via the client
    server = psi.server.CreateWithNewKey(True)
    setup = psi.ServerSetup()
    setup.ParseFromString(
        server.CreateSetupMessage(
            1e-9, len(client_items), server_items, psi.DataStructure.GCS
        ).SerializeToString()
    )
    request = psi.Request()
    request.ParseFromString(client.CreateRequest(client_items).SerializeToString())
    response = psi.Response()
    response.ParseFromString(server.ProcessRequest(request).SerializeToString())
    size = client.GetIntersectionSize(setup, response)
    return {
        "seconds": time.perf_counter() - started,
        "cardinality": size,
        "version": psi.__version__,
    }


# --- ours -----------------------------------------------------------------------------------


class PeakRss:
    """Peak resident memory of each node's process tree, sampled in a thread."""

    def __init__(self, federation: LocalFederation, names: list[str]) -> None:
        self.roots = {n: psutil.Process(federation.processes[n].pid) for n in names}
        self.peak = dict.fromkeys(names, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self, root: psutil.Process) -> int:
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, root in self.roots.items():
                self.peak[name] = max(self.peak[name], self._tree_rss(root))
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ours(files: dict[str, Path], expected: pd.DataFrame, repeats: int) -> dict[str, Any]:
    nodes = [
        LocalNode("ministry", {"idp_registry": files["ministry"]}),
        LocalNode("survey", {"household_survey": files["survey"]}),
        LocalNode("jips"),
    ]
    runs = []
    # a running federation keeps columnar copies of its CSVs: the first run builds them
    with LocalFederation(nodes, session_timeout=1800.0, one_shot=False) as federation:
        assert federation.client is not None
        for attempt in range(repeats):
            time.sleep(2.0)  # the nodes' next session workers are forked and connected
            idle = _tree_rss_mib(federation)
            load = os.getloadavg()[0]
            with PeakRss(federation, ["ministry", "survey", "jips"]) as rss:
                started = time.perf_counter()
                result = federation.client.run(JOB, timeout=1800.0)
                seconds = time.perf_counter() - started
            check_released(result.table, expected, f"run {attempt + 1}")
            runs.append(
                {
                    "seconds": seconds,
                    "matched": result.metadata["matched"],
                    "load_average_before": load,
                    "idle_rss_mib": idle,
                    "peak_rss_mib": {n: round(v / 2**20, 1) for n, v in rss.peak.items()},
                    "timings_by_node": result.metadata["timings_by_node"],
                }
            )
            print(f"  ours run {attempt + 1}: {seconds:.2f} s, matched {runs[-1]['matched']}")
    later = [r["seconds"] for r in runs[1:]] or [runs[0]["seconds"]]
    return {"first_seconds": runs[0]["seconds"], "median_seconds": statistics.median(later),
            "runs": runs}  # fmt: skip


def local_cli(files: dict[str, Path], expected: pd.DataFrame) -> dict[str, Any]:
    """`jointstats local` end to end, start-up included, with its phase clock."""
    with tempfile.TemporaryDirectory(prefix="jointstats-bench-") as tmp:
        job_file, out_file = Path(tmp) / "job.toml", Path(tmp) / "linked.csv"
        clock_file = Path(tmp) / "clock.json"
        job_file.write_text(tomli_w.dumps(JOB))
        script = Path(sys.executable).with_name("jointstats")
        command = [str(script), "local", str(job_file), "--out", str(out_file),
                   "--node", f"ministry={files['ministry']}",
                   "--node", f"survey={files['survey']}", "--node", "jips"]  # fmt: skip
        load = os.getloadavg()
        launched = time.time()
        started = time.perf_counter()
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, TIMINGS_ENV: str(clock_file)},
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"jointstats local failed ({done.returncode}):\n{done.stderr}")
        table = pd.read_csv(out_file, keep_default_na=False, na_values=[""])
        meta = json.loads(out_file.with_suffix(".meta.json").read_text())
        clock = json.loads(clock_file.read_text())
    table["suppressed"] = table["suppressed"].astype(str).str.lower() == "true"
    check_released(table, expected, "jointstats local")
    marks = [("cli_imports", launched, clock["created"]),
             ("keys", clock["created"], clock["keys"]),
             ("coordinator_port", clock["keys"], clock["spawned"]),
             ("nodes_connected", clock["spawned"], clock["nodes_ready"]),
             ("job", clock["nodes_ready"], clock["stop"]),
             ("stop", clock["stop"], clock["stopped"])]  # fmt: skip
    phases = {name: round(end - start, 3) for name, start, end in marks}
    phases["after_stop"] = round(seconds - sum(phases.values()), 3)
    print(f"  jointstats local: {seconds:.2f} s")
    return {
        "seconds": seconds,
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "phases": phases,
        "timings_by_node": meta.get("timings_by_node"),
        "command": " ".join(command),
    }


def _tree_rss_mib(federation: LocalFederation) -> dict[str, float]:
    out = {}
    for name in ("ministry", "survey", "jips"):
        root = psutil.Process(federation.processes[name].pid)
        procs = [root, *root.children(recursive=True)]
        out[name] = round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
    return out


# --- report ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def bench_size(rows: int, repeats: int, skip_openmined: bool) -> dict[str, Any]:
    print(f"N = {rows} per side, {rows // 2} shared")
    files = dataset_files(rows)
    expected = truth(files)
    entry: dict[str, Any] = {"rows": rows, "shared": rows // 2, "target_ratio": TARGETS.get(rows)}
    if not skip_openmined:
        entry["openmined"] = openmined_cardinality(files)
        print(f"  OpenMined PSI cardinality: {entry['openmined']['seconds']:.2f} s")
        if entry["openmined"]["cardinality"] != rows // 2:
            raise AssertionError("OpenMined PSI found a different intersection size")
    entry["ours"] = ours(files, expected, repeats)
    entry["local"] = local_cli(files, expected)
    if "openmined" in entry:
        entry["ratio"] = entry["ours"]["median_seconds"] / entry["openmined"]["seconds"]
        entry["local_ratio"] = entry["local"]["seconds"] / entry["openmined"]["seconds"]
    return entry


def print_report(sizes: list[dict[str, Any]]) -> None:
    for entry in sizes:
        ratio = entry.get("ratio")
        target = entry.get("target_ratio")
        shown = f"{ratio:.3f} (target <= {target})" if ratio is not None else "n/a"
        print(f"\nN = {entry['rows']}: ours {entry['ours']['median_seconds']:.2f} s; ratio {shown}")
        local = entry["local"]
        local_ratio = entry.get("local_ratio")
        print(
            f"  jointstats local {local['seconds']:.2f} s"
            + (f" = {local_ratio:.3f} x OpenMined (issue 13: <= 0.1)" if local_ratio else "")
        )
        print("  local phases: " + ", ".join(f"{k} {v:.2f}" for k, v in local["phases"].items()))
        run = entry["ours"]["runs"][-1]
        for node, phases in run["timings_by_node"].items():
            text = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            print(f"  {node}: {text}; peak RSS {run['peak_rss_mib'][node]:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-openmined", action="store_true")
    args = parser.parse_args()
    sizes = [bench_size(rows, args.repeats, args.skip_openmined) for rows in args.sizes]
    print_report(sizes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "loadavg_at_end": os.getloadavg(), "job": JOB, "sizes": sizes}
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

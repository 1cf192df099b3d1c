"""Secondary suppression against a solving attacker, DP noise inside MPC, and the budget
ledger, through real processes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import AGENCIES, JOB, pooled
from tests.plaintext import assert_protected_release, attacker_widths, expected_crosstab


def determined_cells(table: pd.DataFrame, by: list[str]) -> list[tuple]:
    """The attacker: from released cells and margins, which suppressed cells are uniquely
    determined by the linear constraints? (x_e is determined iff e is in the row space.)"""
    cells = table[(table[by[0]] != "total") & (table[by[1]] != "total")]
    unknown = [tuple(r) for r in cells.loc[cells["suppressed"], by].itertuples(index=False)]
    if not unknown:
        return []
    position = {cell: i for i, cell in enumerate(unknown)}
    equations = []
    for axis, other in ((0, 1), (1, 0)):
        margins = table[(table[by[other]] == "total") & (table[by[axis]] != "total")]
        for label, suppressed in zip(margins[by[axis]], margins["suppressed"], strict=True):
            if not suppressed:
                row = np.zeros(len(unknown))
                for cell, i in position.items():
                    if cell[axis] == label:
                        row[i] = 1
                equations.append(row)
    if not equations:
        return []
    matrix = np.array(equations)
    rank = np.linalg.matrix_rank(matrix)
    determined = []
    for cell, i in position.items():
        unit = np.zeros((1, len(unknown)))
        unit[0, i] = 1
        if np.linalg.matrix_rank(np.vstack([matrix, unit])) == rank:
            determined.append(cell)
    return determined


def test_margins_with_secondary_suppression_resist_the_attacker(federation, data_dir):
    job = copy.deepcopy(JOB)
    job["disclosure"]["margins"] = True
    result = federation.client.run(job, timeout=180)
    table = result.table
    by = JOB["by"]
    cells = table[(table[by[0]] != "total") & (table[by[1]] != "total")].reset_index(drop=True)
    expected = expected_crosstab(pooled(data_dir), by, JOB["domains"], 10)
    assert cells["suppressed"].sum() > expected["suppressed"].sum(), "secondary suppression"
    assert_protected_release(table, expected, by, 10)
    frame = pooled(data_dir)
    for label, total in frame.groupby(by[0]).size().items():
        margin = table[(table[by[0]] == label) & (table[by[1]] == "total")]
        if not margin["suppressed"].iloc[0]:
            assert margin["count"].iloc[0] == total
    grand = table[(table[by[0]] == "total") & (table[by[1]] == "total")]
    assert grand["suppressed"].iloc[0] or grand["count"].iloc[0] == len(frame)
    assert determined_cells(table, by) == []
    assert result.metadata["narrowest_interval"] >= 9
    assert min(attacker_widths(table, by)) == pytest.approx(result.metadata["narrowest_interval"])


def test_dp_noise_is_present_and_of_the_right_scale(federation, data_dir):
    """Three large cells in three jobs, epsilon = 1: the noise is not zero and its scale is
    about right (variance 1.84). Nine samples are few: the bounds are set so that a correct
    sampler fails them about once in a thousand runs (all nine zero); the distribution itself
    is checked on many samples in tests/unit/test_dp_noise.py."""
    frame = pooled(data_dir)
    job = copy.deepcopy(JOB)
    job["by"] = ["region"]
    job["domains"] = {"region": ["north", "south"]}
    job["disclosure"] = {"min_cell": 10, "epsilon": 1.0}
    job["domains"]["other"] = True
    noise = []
    truth = frame["region"].where(frame["region"].isin(["north", "south"]), "other")
    true_counts = truth.value_counts()
    for _ in range(3):
        result = federation.client.run(job, timeout=180)
        assert result.metadata["epsilon_spent"] == 1.0
        for label, count in zip(result.table["region"], result.table["count"], strict=True):
            noise.append(int(count) - int(true_counts[label]))
    noise = np.array(noise)
    assert np.any(noise != 0)
    assert np.all(np.abs(noise) <= 29)  # truncation bound B for epsilon = 1
    assert np.mean(noise**2) < 16.0  # variance 1.84; one |x| = 8 (p ~ 0.4 %) gave 9.3 once


def test_budget_is_refused_when_exhausted_and_survives_restart(data_dir, tmp_path: Path):
    nodes = [
        LocalNode(
            a,
            {"households": data_dir / a / "households.csv"},
            policy={"budgets": {"households": 1.0}},
        )
        for a in AGENCIES
    ]
    job = copy.deepcopy(JOB)
    job["disclosure"]["epsilon"] = 0.6
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        assert fed.client.run(job, timeout=120).metadata["epsilon_spent"] == 0.6
        with pytest.raises(JobFailed, match="exceed its budget"):
            fed.client.run(job, timeout=120)
        fed.restart_node("drc")
        fed.client.wait_for_nodes(list(AGENCIES), timeout=30)
        with pytest.raises(JobFailed, match="exceed its budget"):
            fed.client.run(job, timeout=120)
        status = fed.client.status(fed.client.submit(job))
        assert status.state in ("submitted", "failed", "running")


def test_a_node_policy_refusal_reaches_the_analyst(data_dir, tmp_path: Path):
    strict = {"analysts": []}
    nodes = [
        LocalNode(
            a, {"households": data_dir / a / "households.csv"}, policy=strict if a == "nrc" else {}
        )
        for a in AGENCIES
    ]
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        job_id = fed.client.submit(JOB)
        with pytest.raises(JobFailed, match="node nrc refused: the analyst's key is not allowed"):
            fed.client.wait(job_id, timeout=60)
        nodes = fed.client.status(job_id).nodes
        state, reason = nodes["nrc"]
        assert state == "refused" and "not allowed" in reason
        for other in ("unhcr", "drc"):  # stopped by nrc's refusal: say where they were
            assert nodes[other][0] == "aborted" and nodes[other][1].startswith("(was "), nodes
        entries = [
            json.loads(x) for x in (fed.workdir / "nrc" / "audit.jsonl").read_text().splitlines()
        ]
        refusal = [e for e in entries if e["job_id"] == job_id and e["event"] == "JOB_REFUSED"]
        assert refusal and "not allowed" in refusal[0]["fields"]["reason"]


def test_row_limit_and_coordinator_audit(data_dir, tmp_path: Path):
    nodes = [
        LocalNode(
            a,
            {"households": data_dir / a / "households.csv"},
            policy={"max_rows": 100} if a == "unhcr" else {},
        )
        for a in AGENCIES
    ]
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        with pytest.raises(JobFailed, match="the job would use more rows than") as failure:
            fed.client.run(JOB, timeout=60)
        reason = str(failure.value).split(" failed: ", 1)[1]  # not the job id: random hex
        assert "300" not in reason and "node unhcr" in reason
        log = fed.workdir / "coordinator" / "audit.jsonl"
        events = [json.loads(x)["event"] for x in log.read_text().splitlines()]
        assert events[:2] == ["JOB_SUBMITTED", "JOB_FAILED"]


def test_released_zeros_are_not_used_as_complementary_cells(tmp_path: Path):
    """Row a: 3 (suppressed), 0 (released zero), 50; the complement must be 50, not the zero."""
    table = {
        ("a", "x"): 3,
        ("a", "y"): 0,
        ("a", "z"): 50,
        ("b", "x"): 40,
        ("b", "y"): 30,
        ("b", "z"): 60,
    }
    rows = [key for key, n in table.items() for _ in range(n)]
    nodes = []
    for i, agency in enumerate(AGENCIES):
        part = pd.DataFrame(rows[i::3], columns=["g", "h"])
        (tmp_path / agency).mkdir()
        part.to_csv(tmp_path / agency / "t.csv", index=False)
        nodes.append(LocalNode(agency, {"t": tmp_path / agency / "t.csv"}))
    job = {
        "kind": "crosstab",
        "dataset": "t",
        "by": ["g", "h"],
        "domains": {"g": ["a", "b"], "h": ["x", "y", "z"]},
        "disclosure": {"min_cell": 5, "margins": True, "release_zeros": True},
    }
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        result = fed.client.run(job, timeout=120).table
    cell = {
        (g, h): (s, c)
        for g, h, c, s in result[["g", "h", "count", "suppressed"]].itertuples(index=False)
    }
    assert cell[("a", "x")][0] and cell[("a", "z")][0]  # primary and its complement
    assert cell[("a", "y")] == (False, 0)  # the released zero stays released
    assert determined_cells(result, ["g", "h"]) == []


BRIDGE = [[1, 2, 3, 9], [2, 1, 8, 7], [6, 9, 2, 1], [7, 8, 3, 4]]  # tests/unit/test_suppression


def test_a_bridge_cell_is_not_recoverable_from_rows_and_columns(tmp_path: Path):
    """The attack on the old rule: with the 4x4 table below and min_cell 5 every line had two
    suppressed cells, yet row 1 + row 2 - column 1 - column 2 gave cell (a1, b3) exactly."""
    rows = [
        (f"a{r + 1}", f"b{c + 1}") for r, line in enumerate(BRIDGE) for c, n in enumerate(line)
        for _ in range(n)
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["a", "b"])
    nodes = []
    for i, agency in enumerate(AGENCIES):
        path = tmp_path / agency / "grid.csv"
        path.parent.mkdir()
        frame.iloc[i::3].to_csv(path, index=False)
        nodes.append(LocalNode(agency, {"grid": path}))
    domains = {"a": ["a1", "a2", "a3", "a4"], "b": ["b1", "b2", "b3", "b4"]}
    job = {"kind": "crosstab", "dataset": "grid", "by": ["a", "b"], "domains": domains}
    job["disclosure"] = {"min_cell": 5, "margins": True}
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        result = fed.client.run(job, timeout=120)
    table = result.table
    cell = table[(table["a"] == "a1") & (table["b"] == "b3")]
    assert cell["suppressed"].iloc[0]
    assert_protected_release(table, expected_crosstab(frame, ["a", "b"], domains, 5), ["a", "b"], 5)
    assert determined_cells(table, ["a", "b"]) == []
    assert result.metadata["secondary_suppressed"] > 0

"""Differencing by input subsets: the same pooled job on [a, b, c] and on [a, b] gives c's
exact counts, small cells included; `pool_with` and `require_epsilon` stop it (real processes)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import AGENCIES, JOB, pooled

SUBSET = {**JOB, "inputs": ["unhcr", "drc"]}  # nrc left out: the difference is nrc's table


def _counts(result) -> pd.DataFrame:
    return result.table.set_index(JOB["by"])[["count", "suppressed"]]


def test_an_input_subset_reveals_the_left_out_nodes_small_cells(federation, data_dir):
    full = _counts(federation.client.run(JOB, timeout=120))
    part = _counts(federation.client.run(SUBSET, timeout=120))
    nrc = pd.read_csv(data_dir / "nrc" / "households.csv").groupby(JOB["by"]).size()
    both = ~full["suppressed"] & ~part["suppressed"]
    difference = (full.loc[both, "count"] - part.loc[both, "count"]).astype(int)
    truth = nrc.reindex(difference.index, fill_value=0)
    assert (difference == truth).all()  # nrc's exact counts, without nrc ever seeing job 2
    small = truth[(truth > 0) & (truth < JOB["disclosure"]["min_cell"])]
    assert len(small) > 0  # cells nrc's own table would have suppressed


def test_pool_with_and_require_epsilon_refuse_the_differencing_job(data_dir, tmp_path: Path):
    pool = {"pool_with": list(AGENCIES)}
    policies = {"unhcr": pool, "drc": pool, "nrc": {"require_epsilon": True}}
    nodes = [
        LocalNode(a, {"households": data_dir / a / "households.csv"}, policy=policies[a])
        for a in AGENCIES
    ]
    nodes.append(LocalNode("jips"))
    noisy = copy.deepcopy(JOB)
    noisy["disclosure"]["epsilon"] = 1.0
    with LocalFederation(nodes, tmp_path / "fed", session_timeout=60) as fed:
        with pytest.raises(JobFailed, match=r"node nrc requires `epsilon` in \[disclosure\]"):
            fed.client.run(JOB, timeout=120)
        assert fed.client.run(noisy, timeout=120).metadata["epsilon_spent"] == 1.0
        with pytest.raises(JobFailed, match="pools data only with exactly drc, nrc, unhcr"):
            fed.client.run({**noisy, "inputs": ["unhcr", "drc"]}, timeout=120)


def test_two_filters_one_apart_reveal_a_small_group_exactly(federation, data_dir):
    """The attack docs/privacy.md describes: `income <= t` and `income <= t - 1` differ by the
    households with income exactly t, a group far below min_cell, cell by cell. Nothing in one
    table stops it; only noise (epsilon, `require_epsilon`) bounds it."""
    people = pooled(data_dir)
    t = int(people["income"].mode().iloc[0])  # the commonest income: some household has it
    jobs = [{**JOB, "where": {"income": {"max": m}}} for m in (t, t - 1)]
    wide, narrow = (_counts(federation.client.run(job, timeout=120)) for job in jobs)
    both = ~wide["suppressed"] & ~narrow["suppressed"]
    difference = (wide.loc[both, "count"] - narrow.loc[both, "count"]).astype(int)
    exactly_t = people[people["income"] == t].groupby(JOB["by"]).size()
    assert (difference == exactly_t.reindex(difference.index, fill_value=0)).all()
    assert difference.sum() >= 1 and difference.max() < JOB["disclosure"]["min_cell"]

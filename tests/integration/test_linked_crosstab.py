"""Linked crosstab through a running federation (real processes, mTLS gRPC, MPC over the relay):
a registry (ministry), a survey (survey) and a compute-only helper (jips). Released cells are
checked against a plaintext pandas merge + groupby on the same files."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import JobError, JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.plaintext import assert_protected_release, attacker_widths, expected_crosstab

DISTRICTS = ["d1", "d2", "d3", "d4"]
SEXES = ["f", "m"]
EMPLOYMENT = ["employed", "unemployed", "inactive"]
JOB: dict = {
    "kind": "linked_crosstab",
    "helper": "jips",
    "left": {
        "node": "ministry",
        "dataset": "idp_registry",
        "key": "national_id",
        "by": ["district", "sex"],
    },
    "right": {
        "node": "survey",
        "dataset": "household_survey",
        "key": "national_id",
        "by": ["employment"],
    },
    "domains": {"district": DISTRICTS, "sex": SEXES, "employment": EMPLOYMENT},
    "disclosure": {"min_cell": 5},
}
DUPLICATES = 7


def _ids(numbers: np.ndarray) -> list[str]:
    return [f"ID{n:06d}" for n in numbers]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Registry 2000, survey 1500, 800 people in both; skewed categories (small cells)."""
    root = tmp_path_factory.mktemp("linked")
    rng = np.random.default_rng(20261128)
    people = rng.permutation(10_000)
    registry = pd.DataFrame(
        {
            "national_id": _ids(people[:2000]),
            "district": rng.choice(DISTRICTS, 2000, p=[0.6, 0.3, 0.095, 0.005]),
            "sex": rng.choice(SEXES, 2000),
        }
    )
    survey = pd.DataFrame(
        {
            "national_id": _ids(np.concatenate([people[1200:2000], people[5000:5700]])),
            "employment": rng.choice(EMPLOYMENT, 1500, p=[0.5, 0.42, 0.08]),
            "weight": rng.uniform(0.2, 40.0, 1500).round(3),
        }
    ).sample(frac=1.0, random_state=1)
    repeated = registry.sample(DUPLICATES, random_state=2).assign(district="d4")
    with_dups = pd.concat([registry, repeated]).sample(frac=1.0, random_state=3)
    messy = registry.copy()
    lower = rng.random(2000) < 0.3
    messy.loc[lower, "national_id"] = "  " + messy.loc[lower, "national_id"].str.lower() + " "
    wide = rng.random(2000) < 0.1  # fullwidth forms, folded by NFKC
    messy.loc[wide, "national_id"] = messy.loc[wide, "national_id"].map(_fullwidth)
    paths = {}
    for name, frame, folder in (
        ("idp_registry", registry, "ministry"),
        ("registry_dups", with_dups, "ministry"),
        ("registry_messy", messy, "ministry"),
        ("household_survey", survey, "survey"),
    ):
        (root / folder).mkdir(exist_ok=True)
        paths[name] = root / folder / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.fixture(scope="module")
def federation(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFederation]:
    nodes = [
        LocalNode(
            "ministry", {n: files[n] for n in ("idp_registry", "registry_dups", "registry_messy")}
        ),
        LocalNode("survey", {"household_survey": files["household_survey"]}),
        LocalNode("jips"),
    ]
    with LocalFederation(nodes, tmp_path_factory.mktemp("fed"), session_timeout=120) as fed:
        yield fed


def _linked(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    return left.merge(right, on="national_id", how="inner", validate="one_to_one")


def _expected(merged: pd.DataFrame, min_cell: int = 5) -> pd.DataFrame:
    by = ["district", "sex", "employment"]
    return expected_crosstab(merged, by, JOB["domains"], min_cell=min_cell)


def _check(result, expected: pd.DataFrame, min_cell: int = 5) -> None:
    """Released cells exact, small cells suppressed, and n (public) pins no suppressed cell."""
    table = result.table
    by = ["district", "sex", "employment"]
    assert list(table.columns[:3]) == by
    assert result.metadata["matched"] == int(expected["count"].sum())
    assert_protected_release(table, expected, by, min_cell, total=result.metadata["matched"])
    assert table.loc[table["suppressed"], "count"].isna().all()


def _read(files: dict[str, Path], name: str) -> pd.DataFrame:
    return pd.read_csv(files[name], dtype=str)


def test_released_cells_equal_a_plaintext_join(federation, files):
    result = federation.client.run(JOB, timeout=120)
    merged = _linked(_read(files, "idp_registry"), _read(files, "household_survey"))
    expected = _expected(merged)
    assert expected["suppressed"].any() and not expected["suppressed"].all()
    _check(result, expected)
    meta = result.metadata
    assert len(merged) == 800
    assert meta["matched"] == 800  # public: every party knows n
    assert meta["parties"] == ["ministry", "survey", "jips"] and meta["helper"] == "jips"
    assert meta["disclosure"]["min_cell"] == 5
    assert meta["suppressed_cells"] == int(result.table["suppressed"].sum())
    assert meta["narrowest_interval"] >= 4
    phases = {"normalize", "tag", "match", "share", "product", "disclose", "release"}
    assert phases <= set(meta["timings_by_node"]["ministry"])
    assert "weighted_count" not in result.table


def test_weighted_counts_equal_pandas(federation, files):
    job = copy.deepcopy(JOB)
    job["right"]["weight"] = "weight"
    result = federation.client.run(job, timeout=120)
    merged = _linked(_read(files, "idp_registry"), pd.read_csv(files["household_survey"]))
    expected = _expected(merged)  # suppression decided on the unweighted count
    _check(result, expected)
    sums = merged.groupby(["district", "sex", "employment"])["weight"].sum()
    released = result.table[~result.table["suppressed"]]
    assert len(released) > 0
    for row in released.itertuples(index=False):
        truth = sums.get((row.district, row.sex, row.employment), 0.0)
        assert row.weighted_count == pytest.approx(truth, abs=1e-6)
    assert result.table.loc[result.table["suppressed"], "weighted_count"].isna().all()


def test_duplicates_fail_without_a_count_or_a_value(federation, files):
    job = copy.deepcopy(JOB)
    job["left"]["dataset"] = "registry_dups"
    with pytest.raises(JobFailed) as failure:
        federation.client.run(job, timeout=120)
    message = str(failure.value)
    assert "national_id: records repeat the key" in message
    assert str(DUPLICATES) not in message.split("registry_dups")[-1]
    assert "ID0" not in message and "national_id" in message


def test_duplicates_first_keeps_the_first_record_in_file_order(federation, files):
    job = copy.deepcopy(JOB)
    job["left"].update(dataset="registry_dups", duplicates="first")
    result = federation.client.run(job, timeout=120)
    left = _read(files, "registry_dups").drop_duplicates("national_id", keep="first")
    merged = _linked(left, _read(files, "household_survey"))
    _check(result, _expected(merged))
    last = _linked(
        _read(files, "registry_dups").drop_duplicates("national_id", keep="last"),
        _read(files, "household_survey"),
    )
    assert not _expected(last)["count"].equals(_expected(merged)["count"])  # the test can fail


def test_keys_link_after_normalization_only_when_asked(federation, files):
    job = copy.deepcopy(JOB)
    job["left"]["dataset"] = "registry_messy"
    raw = federation.client.run(job, timeout=120)
    raw_total = raw.table["count"].fillna(0).sum()
    for side in ("left", "right"):
        job[side]["normalize"] = ["strip", "casefold", "nfkc"]
    normalized = federation.client.run(job, timeout=120)
    merged = _linked(_read(files, "idp_registry"), _read(files, "household_survey"))
    _check(normalized, _expected(merged))
    assert (
        raw_total < normalized.table["count"].fillna(0).sum()
    )  # messy ids missed unless normalized


def test_a_table_below_the_threshold_shows_only_the_public_n(federation):
    """Every cell below min_cell: all are suppressed, and n (public) pins none of them."""
    job = copy.deepcopy(JOB)
    job["disclosure"]["min_cell"] = 700
    result = federation.client.run(job, timeout=120)
    assert result.metadata["matched"] == 800
    assert result.table["suppressed"].all()
    by = ["district", "sex", "employment"]
    assert min(attacker_widths(result.table, by, total=800)) >= 699


def test_one_suppressed_cell_is_not_given_back_by_n(federation, files):
    """The attack: with n public, one suppressed cell is n minus the released cells. A
    threshold that suppresses exactly one cell must bring secondary suppression."""
    merged = _linked(_read(files, "idp_registry"), _read(files, "household_survey"))
    counts = _expected(merged, 1)["count"].sort_values()
    threshold = int(counts[counts > 0].iloc[0]) + 1  # suppresses the zeros and the smallest
    job = copy.deepcopy(JOB)
    job["disclosure"] = {"min_cell": threshold, "release_zeros": True}
    result = federation.client.run(job, timeout=120)
    expected = _expected(merged, threshold)
    expected["suppressed"] &= expected["count"] != 0
    primary = int(expected["suppressed"].sum())
    assert 1 <= primary <= 2  # the attack: n minus the released cells gives their sum
    assert int(result.table["suppressed"].sum()) > primary
    by = ["district", "sex", "employment"]
    assert min(attacker_widths(result.table, by, total=800)) >= threshold - 1
    assert_protected_release(result.table, expected, by, threshold, total=800)


def test_release_zeros_and_other(federation, files):
    job = copy.deepcopy(JOB)
    job["domains"] = {**JOB["domains"], "district": ["d1", "d2"], "other": True}
    job["disclosure"]["release_zeros"] = True
    result = federation.client.run(job, timeout=120)
    merged = _linked(_read(files, "idp_registry"), _read(files, "household_survey"))
    merged.loc[~merged["district"].isin(["d1", "d2"]), "district"] = "other"
    domains = {"district": ["d1", "d2", "other"], "sex": [*SEXES, "other"]}
    domains["employment"] = [*EMPLOYMENT, "other"]
    expected = expected_crosstab(merged, ["district", "sex", "employment"], domains, 5)
    expected["suppressed"] &= expected["count"] != 0
    by = ["district", "sex", "employment"]
    assert_protected_release(result.table, expected, by, 5, total=result.metadata["matched"])
    zeros = expected["count"] == 0
    assert (~result.table.loc[zeros, "suppressed"]).all()  # a released zero is never a complement


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"helper": "survey"}, "helper 'survey' holds one side's data"),
        ({"helper": "ministry"}, "the helper must be a third node"),
        ({"helper": "unicef"}, "unknown node 'unicef'"),
        ({"right": {**JOB["right"], "node": "ministry"}}, "different nodes"),
        ({"right": {**JOB["right"], "dataset": "census"}}, "does not expose dataset 'census'"),
    ],
)
def test_bad_plans_are_refused_at_submission(federation, change, message):
    with pytest.raises(JobError, match=message):
        federation.client.submit({**JOB, **change})


def test_missing_key_column_fails_with_a_value_free_reason(federation):
    job = copy.deepcopy(JOB)
    job["right"]["key"] = "person_id"
    with pytest.raises(JobFailed, match="no column 'person_id'"):
        federation.client.run(job, timeout=120)


def test_values_outside_the_domain_are_counted_never_shown(federation):
    job = copy.deepcopy(JOB)
    job["domains"] = {**JOB["domains"], "employment": ["employed", "unemployed"]}
    with pytest.raises(JobFailed) as failure:
        federation.client.run(job, timeout=120)
    message = str(failure.value)
    assert "column employment:" in message and "values outside the domain" in message
    assert "inactive" not in message


def test_margins_and_epsilon_work_for_linked_jobs(federation, files):
    merged = _linked(_read(files, "idp_registry"), _read(files, "household_survey"))
    by = ["district", "sex", "employment"]
    job = copy.deepcopy(JOB)
    job["disclosure"] = {"min_cell": 5, "margins": True}
    result = federation.client.run(job, timeout=120)
    table = result.table
    assert_protected_release(table, _expected(merged), by, 5, total=800)
    grand = table[(table[by] == "total").all(axis=1)]
    assert not grand["suppressed"].iloc[0] and grand["count"].iloc[0] == 800  # n is public
    job["disclosure"] = {"min_cell": 5, "epsilon": 1.0}
    noisy = federation.client.run(job, timeout=120)
    assert noisy.metadata["epsilon_spent"] == 1.0
    truth = _expected(merged)
    shown = ~noisy.table["suppressed"]
    error = noisy.table.loc[shown, "count"] - truth.loc[shown, "count"]
    assert error.abs().max() <= 28 and len(error) > 0  # within the truncation bound B

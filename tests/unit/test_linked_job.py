"""Linked crosstab: job validation, plans, and the local step on small files."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jointstats.errors import DataError, JobError
from jointstats.node.sources import FileSource
from jointstats.protocols import parse_job
from jointstats.protocols.base import FederationView
from jointstats.protocols.linked.records import WEIGHT_SCALE, normalize_keys
from jointstats.protocols.linked_crosstab import PROTOCOL
from tests.unit.test_linked_shares import linked_job

VIEW = FederationView(
    roles={"ministry": "node", "survey": "node", "jips": "compute", "unhcr": "node"},
    online={"ministry", "survey", "jips", "unhcr"},
    datasets={"ministry": {"idp_registry"}, "survey": {"household_survey"}},
)


def test_a_valid_job_parses_and_plans() -> None:
    _, job = parse_job(linked_job(weight=True))
    assert job.width(job.left) == 6 and job.width(job.right) == 4 and job.n_cells == 24
    assert job.weighted and job.left.duplicates == "error" and job.min_cell == 1
    plan = PROTOCOL.plan(job, VIEW)
    assert plan.parties == ("ministry", "survey", "jips")
    assert plan.data_parties == ("ministry", "survey")
    assert PROTOCOL.columns_used(job, "survey") == {"household_survey": ["id", "emp", "weight"]}
    assert PROTOCOL.columns_used(job, "jips") == {}


def _with(path: str, value) -> dict:
    doc = copy.deepcopy(linked_job())
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("helper", None, "`helper`"),
        ("left", None, r"\[left\] table"),
        ("left.key", "", r"\[left\] needs `key`"),
        ("left.by", [], "left.by"),
        ("left.normalize", ["upper"], "`normalize`"),
        ("right.duplicates", "last", "`duplicates`"),
        ("left.weight", "w", "`weight` goes in"),
        ("right.by", ["d"], "appear on both sides"),
        ("right.colour", "red", "unknown field"),
        ("disclosure.epsilon", 20.0, "epsilon"),
        ("disclosure.colour", 1, "unknown field"),
        ("disclosure.min_cell", 0, "min_cell"),
        ("domains.emp", None, "declare the categories of `emp`"),
        ("left.by", ["id"], "key cannot also be"),
    ],
)
def test_bad_fields_get_a_one_line_reason(path: str, value, message: str) -> None:
    with pytest.raises(JobError, match=message) as error:
        parse_job(_with(path, value))
    assert "\n" not in str(error.value)


def test_a_side_too_wide_is_refused() -> None:
    doc = linked_job()
    doc["domains"]["d"] = [f"d{i}" for i in range(600)]
    with pytest.raises(JobError, match="at most 1000"):
        parse_job(doc)


@pytest.mark.parametrize(
    ("helper", "message"),
    [("survey", "holds one side's data"), ("ministry", "third node"), ("x", "unknown node")],
)
def test_the_helper_must_be_a_third_node(helper: str, message: str) -> None:
    _, job = parse_job({**linked_job(), "helper": helper})
    with pytest.raises(JobError, match=message):
        PROTOCOL.plan(job, VIEW)


def test_normalization_steps() -> None:
    keys = pa.array([" Ab ", "ＡＢ", "STRASSE", "straße", None])
    assert normalize_keys(keys, ()).to_pylist() == [" Ab ", "ＡＢ", "STRASSE", "straße", None]
    folded = normalize_keys(keys, ("nfkc", "casefold", "strip")).to_pylist()
    assert folded == ["ab", "ab", "strasse", "strasse", None]


def _source(tmp_path, frame: pd.DataFrame, name: str = "idp_registry") -> dict:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return {name: FileSource(name, path)}


def _registry(ids: list, d: list, s: list | None = None) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "d": d, "s": s or ["f"] * len(ids)})


def test_local_step_drops_empty_keys_and_keeps_the_first_duplicate(tmp_path) -> None:
    frame = _registry(["007", "", "x", "007", "y"], ["d1", "d2", "d3", "d2", "d1"])
    frame.loc[4, "id"] = None
    doc = _with("left.duplicates", "first")
    doc["left"]["normalize"] = ["strip"]
    _, job = parse_job(doc)
    records = PROTOCOL.local_step(job, "ministry", _source(tmp_path, frame))
    assert sorted(records.keys.to_pylist()) == ["007", "x"]  # "007" read as text, not 7
    by_key = dict(zip(records.keys.to_pylist(), records.cells.tolist(), strict=True))
    assert by_key == {"007": 0, "x": 4}  # d1/f = cell 0 (the first "007"), d3/f = cell 4
    facts = PROTOCOL.local_facts(job, records)
    assert facts == {
        "rows_read": 5,
        "rows_used": 2,
        "empty_keys_dropped": 2,
        "duplicates_dropped": 1,
    }


def test_duplicates_are_an_error_by_default_without_a_count(tmp_path) -> None:
    frame = _registry(["a1", "a1", "a1", "b"], ["d1"] * 4)
    _, job = parse_job(linked_job())
    with pytest.raises(DataError, match="key column id: records repeat the key") as error:
        PROTOCOL.local_step(job, "ministry", _source(tmp_path, frame))
    assert "a1" not in str(error.value) and "2" not in str(error.value)


def test_domain_and_weight_errors_carry_no_values_and_no_counts(tmp_path) -> None:
    _, job = parse_job(linked_job(weight=True))
    survey = pd.DataFrame({"id": ["1", "2", "3"], "emp": ["e", "zz", "zz"], "weight": [1, 2, 3]})
    with pytest.raises(DataError, match="column emp: values outside the domain") as error:
        PROTOCOL.local_step(job, "survey", _source(tmp_path, survey, "household_survey"))
    assert "zz" not in str(error.value) and "2" not in str(error.value)
    survey = pd.DataFrame(
        {"id": ["1", "2", "3"], "emp": ["e", "u", "i"], "weight": ["1", "-2", "x"]}
    )
    with pytest.raises(DataError, match="column weight: weights that are empty, not a number"):
        PROTOCOL.local_step(job, "survey", _source(tmp_path, survey, "household_survey"))
    survey["weight"] = ["1.5", "0", "2.000001"]
    records = PROTOCOL.local_step(job, "survey", _source(tmp_path, survey, "household_survey"))
    by_key = dict(zip(records.keys.to_pylist(), records.weights.tolist(), strict=True))
    assert by_key == {"1": 1.5 * WEIGHT_SCALE, "2": 0, "3": 2_000_001}
    assert records.weights.dtype == np.uint64


def test_other_maps_unknown_values_but_not_empty_ones(tmp_path) -> None:
    doc = linked_job()
    doc["domains"]["other"] = True
    _, job = parse_job(doc)
    frame = _registry(["1", "2"], ["d9", "d1"])
    records = PROTOCOL.local_step(job, "ministry", _source(tmp_path, frame))
    by_key = dict(zip(records.keys.to_pylist(), records.cells.tolist(), strict=True))
    assert by_key == {"1": 3 * 3, "2": 0}  # d: 4 categories with other, s: 3 with other
    frame = _registry(["1", "2"], [None, "d1"])
    with pytest.raises(DataError, match="column d: values outside"):
        PROTOCOL.local_step(job, "ministry", _source(tmp_path, frame))

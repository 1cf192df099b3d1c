"""Job validation for crosstab: clear one-line errors, and no crash on arbitrary input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jointstats.errors import JobError
from jointstats.jobs import canonical_json, parse_job_bytes
from jointstats.protocols import parse_job
from tests.conftest import JOB


def test_a_valid_job_parses() -> None:
    _, job = parse_job(JOB)
    assert job.n_cells == 12 and job.min_cell == 10 and job.by == ("region", "displacement_status")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": ""}, "`dataset`"),
        ({"by": []}, "`by`"),
        ({"by": ["region", "region"]}, "twice"),
        ({"sum": "income"}, "bounds"),
        ({"sum": "income", "bounds": [5, 1]}, "low < high"),
        ({"bounds": [0, 1]}, "`bounds` goes with `sum`"),
        ({"disclosure": {"min_cell": 0}}, "min_cell"),
        ({"disclosure": {"min_cel": 3}}, "unknown field"),
        ({"colour": "red"}, "unknown field"),
        ({"domains": {"region": ["a"]}}, "displacement_status"),
    ],
)
def test_bad_fields_get_a_one_line_reason(change: dict, message: str) -> None:
    with pytest.raises(JobError, match=message) as error:
        parse_job({**JOB, **change})
    assert "\n" not in str(error.value)


def test_too_many_cells_are_refused() -> None:
    domains = {"a": [str(i) for i in range(1000)], "b": [str(i) for i in range(1000)]}
    with pytest.raises(JobError, match="cells"):
        parse_job({**JOB, "by": ["a", "b"], "domains": domains})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted({*JOB, "inputs", "sum", "bounds"})), json_values))
def test_arbitrary_documents_either_parse_or_raise_job_error(changes: dict) -> None:
    doc = {**JOB, **changes, "kind": "crosstab"}
    try:
        parse_job(parse_job_bytes(canonical_json(doc)))
    except JobError as error:
        assert "\n" not in str(error)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_a_job_error(data: bytes) -> None:
    with contextlib.suppress(JobError):
        parse_job(parse_job_bytes(data))

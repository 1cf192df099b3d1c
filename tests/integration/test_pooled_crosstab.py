"""Pooled crosstab through a running federation (real processes, mTLS gRPC, MPC over the relay)."""

from __future__ import annotations

import copy
import re
import time

import numpy as np
import pytest

from jointstats.errors import JobError, JobFailed
from tests.conftest import JOB, STATUSES, pooled
from tests.plaintext import expected_crosstab


def _check(result, expected, with_sum: bool = False) -> None:
    table = result.table
    assert list(table["suppressed"]) == list(expected["suppressed"])
    released = ~expected["suppressed"]
    assert list(table.loc[released, "count"]) == list(expected.loc[released, "count"])
    assert table.loc[~released, "count"].isna().all()
    if with_sum:
        np.testing.assert_allclose(
            table.loc[released, "sum"].to_numpy(float),
            expected.loc[released, "sum"].to_numpy(float),
        )
        assert table.loc[~released, "sum"].isna().all()


def test_pooled_counts_equal_pandas_and_small_cells_are_suppressed(federation, data_dir):
    result = federation.client.run(JOB, timeout=120)
    expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], min_cell=10)
    assert expected["suppressed"].any() and not expected["suppressed"].all()
    _check(result, expected)
    assert result.metadata["inputs"] == ["drc", "nrc", "unhcr"]
    assert result.metadata["parties"] == ["drc", "nrc", "unhcr"]
    assert result.metadata["disclosure"]["min_cell"] == 10


def test_clipped_sums_and_means(federation, data_dir):
    job = {**JOB, "sum": "income", "bounds": [0, 2000]}
    result = federation.client.run(job, timeout=120)
    expected = expected_crosstab(
        pooled(data_dir), JOB["by"], JOB["domains"], 10, value="income", bounds=(0, 2000)
    )
    _check(result, expected, with_sum=True)
    released = ~result.table["suppressed"]
    means = result.table.loc[released, "sum"] / result.table.loc[released, "count"]
    np.testing.assert_allclose(result.table.loc[released, "mean"], means)


def test_node_floor_raises_the_threshold(federation, data_dir):
    job = copy.deepcopy(JOB)
    job["disclosure"]["min_cell"] = 1
    result = federation.client.run(job, timeout=120)
    assert result.metadata["disclosure"]["min_cell"] == 5  # every node's default floor
    expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], min_cell=5)
    _check(result, expected)


def test_release_zeros(federation, data_dir):
    job = copy.deepcopy(JOB)
    job["disclosure"]["release_zeros"] = True
    job["domains"]["region"] = [*JOB["domains"]["region"], "nowhere"]
    result = federation.client.run(job, timeout=120)
    nowhere = result.table[result.table["region"] == "nowhere"]
    assert (nowhere["count"] == 0).all() and not nowhere["suppressed"].any()


def test_two_data_nodes_and_a_compute_only_node(federation, data_dir):
    job = {**JOB, "inputs": ["unhcr", "drc"]}
    result = federation.client.run(job, timeout=120)
    assert result.metadata["parties"] == ["unhcr", "drc", "jips"]
    expected = expected_crosstab(
        pooled(data_dir, ("unhcr", "drc")), JOB["by"], JOB["domains"], min_cell=10
    )
    _check(result, expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": ["unhcr", "unicef"]}, "unknown node 'unicef'"),
        ({"dataset": "census"}, "no connected node exposes dataset 'census'"),
        ({"inputs": ["unhcr", "jips"]}, "node 'jips' does not expose dataset"),
        ({"kind": "regression"}, "unknown job kind"),
        ({"by": [*JOB["by"], "age"]}, "declare the categories of `age`"),
        ({"by": ["region"]}, "entries for no `by` column .*: displacement_status"),
    ],
)
def test_bad_jobs_are_refused_at_submission(federation, change, message):
    with pytest.raises(JobError, match=message):
        federation.client.submit({**JOB, **change})


def test_missing_column_fails_with_a_value_free_reason(federation):
    job = copy.deepcopy(JOB)
    job["by"] = [*JOB["by"], "sex"]
    job["domains"]["sex"] = ["f", "m"]
    with pytest.raises(JobFailed, match="no column 'sex'"):
        federation.client.run(job, timeout=120)


def test_values_outside_the_domain_are_counted_never_shown(federation, data_dir):
    job = copy.deepcopy(JOB)
    job["domains"]["region"] = ["north", "south"]
    with pytest.raises(JobFailed) as failure:
        federation.client.run(job, timeout=120)
    message = str(failure.value)
    assert "column region: values outside the declared domain" in message
    assert "east" not in message and "west" not in message
    # nor the node's exact count of them (it is unsuppressed): no figure after the dataset
    assert not re.search(r"\d", message.split("dataset households")[-1]), message
    job["domains"]["other"] = True
    result = federation.client.run(job, timeout=120)
    assert list(result.table["region"].unique()) == ["north", "south", "other"]
    frame = pooled(data_dir)
    frame.loc[~frame["region"].isin(["north", "south"]), "region"] = "other"
    domains = {"region": ["north", "south", "other"], "displacement_status": [*STATUSES, "other"]}
    expected = expected_crosstab(frame, JOB["by"], domains, 10)
    _check(result, expected)


def test_status_shows_every_party(federation):
    job_id = federation.client.submit(JOB)
    federation.client.wait(job_id, timeout=120)
    status = federation.client.status(job_id)
    assert status.state == "released"
    assert {n: s for n, (s, _) in status.nodes.items()} == {
        "drc": "done",
        "nrc": "done",
        "unhcr": "done",
    }


def test_waiting_for_a_job_is_a_long_poll_not_a_busy_loop(federation, data_dir):
    """`Client.wait` asks the coordinator to answer when the job is finished: a handful of
    GetStatus calls per job instead of one every 50 ms (each one CPU at both ends)."""
    client = federation.client
    calls: list[float] = []
    get_status = client._stub.GetStatus

    def counted(request, **kwargs):
        calls.append(request.wait_seconds)
        return get_status(request, **kwargs)

    client._stub.GetStatus = counted
    try:
        result = client.run(JOB, timeout=120)
    finally:
        client._stub.GetStatus = get_status
    expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], min_cell=10)
    _check(result, expected)
    assert 1 <= len(calls) <= 2 and all(wait > 0 for wait in calls)


def test_a_long_poll_answers_at_a_change_and_never_for_someone_elses_job(federation):
    client = federation.client
    job_id = client.submit(JOB)
    first = client.status(job_id)
    started = time.monotonic()
    changed = client.status(job_id, wait=30, updated_after=first.updated_at)
    assert time.monotonic() - started < 25  # it answered at a change, not at the end of the wait
    assert changed.updated_at != first.updated_at or changed.finished
    finished = client.status(job_id, wait=30, updated_after=changed.updated_at, until_finished=True)
    assert finished.state == "released"
    started = time.monotonic()
    with pytest.raises(JobError, match="no job with id"):
        client.status("0" * 16, wait=30)
    assert time.monotonic() - started < 5

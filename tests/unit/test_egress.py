"""Egress statements of both job kinds: what leaves a node, to whom, how many values."""

from __future__ import annotations

from jointstats.protocols import parse_job
from jointstats.protocols.base import Plan
from jointstats.protocols.linked import wire
from tests.conftest import JOB, REGIONS, STATUSES

LINKED = {
    "kind": "linked_crosstab",
    "helper": "jips",
    "left": {"node": "a", "dataset": "registry", "key": "pid", "by": ["region"]},
    "right": {"node": "b", "dataset": "survey", "key": "pid", "by": ["status"], "weight": "w"},
    "domains": {"region": REGIONS, "status": STATUSES},
    "purpose": "a test",
}


def test_crosstab_input_node_sends_one_share_per_cell_to_each_partner():
    protocol, job = parse_job({**JOB, "purpose": "monthly report"})
    egress = protocol.egress(job, "drc", Plan(("unhcr", "drc", "jips"), ("unhcr", "drc")), None)
    shares, release = egress.outflows
    assert shares.text() == "12 Shamir shares of cell counts to each of unhcr, jips"
    assert (shares.kind, shares.phase, shares.payload_bytes) == ("MPC", "input", 12 * 8)
    assert release.values is None and release.phase == "release"
    assert egress.table.startswith("4 x 3 = 12 cells")


def test_crosstab_sums_and_epsilon_change_the_shares():
    protocol, job = parse_job({**JOB, "sum": "income", "bounds": [0, 10]})
    flows = protocol.egress(job, "drc", Plan(("drc", "nrc", "jips"), ("drc", "nrc")), None).outflows
    assert [f.payload_bytes for f in flows[:2]] == [12 * 8, 12 * 12]  # SecInt(32), SecInt(64)
    _, noisy = parse_job({**JOB, "disclosure": {"min_cell": 10, "epsilon": 1.0}})
    flows = protocol.egress(noisy, "drc", Plan(("drc", "nrc", "jips"), ("drc", "nrc")), None)
    assert flows.outflows[0].payload_bytes == 12 * 12
    compute_only = protocol.egress(job, "jips", Plan(("drc", "nrc", "jips"), ("drc", "nrc")), None)
    assert [f.phase for f in compute_only.outflows] == ["release"]  # no input of its own


def test_linked_left_node_statement_grows_with_its_rows():
    protocol, job = parse_job(LINKED)
    plan = Plan(("a", "b", "jips"), ("a", "b"))
    egress = protocol.egress(job, "a", plan, 8120)
    by_text = {f.text(): f for f in egress.outflows}
    tags = by_text["up to 8,120 keyed 16-byte fingerprints of `pid` to jips"]
    assert tags.payload_bytes == 8120 * 16 + wire._HEADER.size and tags.messages == 2
    matrix = next(f for f in egress.outflows if "masked 8120 x 4 matrix" in f.what)
    assert matrix.to == ("b",) and matrix.values == 8120 * 4
    partial = next(f for f in egress.outflows if f.phase == "disclose" and f.kind == "DATA")
    assert partial.to == ("b",) and partial.values == 12  # the left node sends B its partials
    assert "right node learns your record count" in egress.leakage


def test_linked_right_and_helper_statements():
    protocol, job = parse_job(LINKED)
    plan = Plan(("a", "b", "jips"), ("a", "b"))
    right = protocol.egress(job, "b", plan, 5000).outflows
    matrix = next(f for f in right if "matrix" in f.what)
    assert matrix.values == 5000 * 6  # one-hot plus the weighted copy
    inputs = next(f for f in right if f.kind == "MPC" and f.values)
    assert inputs.to == ("a", "jips") and inputs.values == 12
    helper = protocol.egress(job, "jips", plan, None).outflows
    assert all(f.values is None for f in helper if f.phase in ("match", "share"))
    assert {f.to for f in helper if f.phase == "match"} == {("a",), ("b",)}

"""A node's decision on offers: signatures, expiry, replay and each policy rule."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointstats.config import NodeConfig, Policy
from jointstats.errors import ConfigError, RefusedError
from jointstats.keys import Identity, Roster, new_member
from jointstats.node.policy import Offer, decide, recheck
from jointstats.node.state import NodeState
from jointstats.signing import DEFAULT_TTL_SECONDS, SignedJob
from jointstats.signing import sign_job as sign_with_parties
from tests.conftest import JOB

PARTIES = ["unhcr", "drc", "nrc"]


def sign_job(
    job: dict,
    identity: Identity,
    ttl: float = DEFAULT_TTL_SECONDS,
    parties: list[str] = PARTIES,
    inputs: list[str] | None = None,
) -> SignedJob:
    """The analyst signs the job with the session's parties (inputs default to all)."""
    return sign_with_parties(job, identity, parties, inputs or parties, ttl)


@pytest.fixture
def world(tmp_path: Path):
    roster = Roster()
    members = [("alice", "analyst"), ("mallory", "analyst"), ("unhcr", "node"), ("drc", "node")]
    members += [("nrc", "node"), ("jips", "compute"), ("wfp", "node")]
    for name, role in members:
        roster.members[name] = new_member(tmp_path / name, name, role)
    alice = Identity.load(tmp_path / "alice")
    policy = Policy(
        analysts={
            roster.get("alice").signing_fingerprint: {
                "households": ("region", "displacement_status")
            }
        },
        partners=("drc", "nrc", "jips"),
        budgets={"households": 1.0},
        max_cells=20,
    )
    config = NodeConfig(
        name="unhcr",
        coordinator="",
        roster=tmp_path / "roster.toml",
        keys=tmp_path / "unhcr",
        state_dir=tmp_path,
        datasets={"households": {"path": "x.csv"}},
        policy=policy,
    )
    state = NodeState(tmp_path / "node.sqlite")
    return config, roster, state, alice, Identity.load(tmp_path / "mallory")


def _offer(signed: SignedJob, parties: list[str] = PARTIES) -> Offer:
    return Offer(signed, parties, parties)


def test_a_signed_allowed_job_is_accepted(world) -> None:
    config, roster, state, alice, _ = world
    decision = decide(config, roster, state, _offer(sign_job(JOB, alice)))
    assert decision.accept, decision.reason
    assert decision.columns == {"households": ["region", "displacement_status"]}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda s: SignedJob(s.envelope.replace(b'"min_cell":10', b'"min_cell":1'), s.signature),
            "signature",
        ),
        (lambda s: SignedJob(s.envelope, bytes(64)), "signature"),
        (lambda s: SignedJob(b"{}", s.signature), "envelope"),
    ],
)
def test_tampered_jobs_are_refused(world, mutate, reason: str) -> None:
    config, roster, state, alice, _ = world
    decision = decide(config, roster, state, _offer(mutate(sign_job(JOB, alice))))
    assert not decision.accept and reason in decision.reason


def test_expired_and_replayed_jobs_are_refused(world) -> None:
    config, roster, state, alice, _ = world
    expired = decide(config, roster, state, _offer(sign_job(JOB, alice, ttl=-1)))
    assert not expired.accept and "expired" in expired.reason
    signed = sign_job(JOB, alice)
    assert decide(config, roster, state, _offer(signed)).accept
    replay = decide(config, roster, state, _offer(signed))
    assert not replay.accept and "replayed" in replay.reason


def test_policy_rules_refuse_with_the_rule_named(world) -> None:
    config, roster, state, alice, mallory = world
    cases = [
        (sign_job(JOB, mallory), PARTIES, "analyst's key is not allowed"),
        (sign_job({**JOB, "sum": "income", "bounds": [0, 9]}, alice), PARTIES, "column(s) income"),
        (sign_job({**JOB, "dataset": "census"}, alice), PARTIES, "does not serve dataset"),
        (
            sign_job(JOB, alice, parties=["unhcr", "drc", "wfp"]),
            ["unhcr", "drc", "wfp"],
            "does not compute with wfp",
        ),
    ]
    big = copy.deepcopy(JOB)
    big["domains"]["region"] = [f"r{i}" for i in range(10)]
    cases.append((sign_job(big, alice), PARTIES, "30 cells"))
    for signed, parties, reason in cases:
        decision = decide(config, roster, state, _offer(signed, parties))
        assert not decision.accept and reason in decision.reason, decision.reason


def test_the_budget_is_charged_before_computation_and_persists(world, tmp_path: Path) -> None:
    config, roster, state, alice, _ = world
    job = copy.deepcopy(JOB)
    job["disclosure"]["epsilon"] = 0.6
    assert decide(config, roster, state, _offer(sign_job(job, alice))).accept
    state.close()
    reopened = NodeState(tmp_path / "node.sqlite")
    assert reopened.spent("households") == pytest.approx(0.6)
    refused = decide(config, roster, reopened, _offer(sign_job(job, alice)))
    assert not refused.accept and "exceed its budget" in refused.reason
    assert reopened.spent("households") == pytest.approx(0.6)


def test_a_coordinator_cannot_stack_or_swap_parties(world, tmp_path: Path) -> None:
    config, roster, state, alice, _ = world
    job = {**JOB, "inputs": ["unhcr", "drc"]}
    cases = [
        (["unhcr", "coordinator", "coordinator"], ["unhcr"], "twice"),
        (["unhcr", "drc", "drc"], ["unhcr", "drc"], "twice"),
        (["unhcr", "drc", "alice"], ["unhcr", "drc"], "not a roster node"),
        (["unhcr", "drc", "nrc"], ["unhcr", "drc"], "not compute-only"),
        (["unhcr", "nrc", "jips"], ["unhcr", "nrc"], "differ from the signed job"),
    ]
    for parties, inputs, reason in cases:  # even an analyst's signature cannot allow these
        signed = sign_job(job, alice, parties=parties, inputs=inputs)
        decision = decide(config, roster, state, Offer(signed, parties, inputs))
        assert not decision.accept and reason in decision.reason, (parties, decision.reason)
    signed_plan = {"parties": ["unhcr", "drc", "jips"], "inputs": ["unhcr", "drc"]}
    for parties, inputs in ((["unhcr", "drc", "wfp"], ["unhcr", "drc"]), (PARTIES, PARTIES)):
        swapped = decide(
            config, roster, state, Offer(sign_job(job, alice, **signed_plan), parties, inputs)
        )
        assert not swapped.accept and "differ from those the analyst signed" in swapped.reason
    fine = decide(
        config,
        roster,
        state,
        Offer(sign_job(job, alice, **signed_plan), ["unhcr", "drc", "jips"], ["unhcr", "drc"]),
    )
    assert fine.accept, fine.reason


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    envelope=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    signature=st.binary(max_size=80),
    parties=st.lists(st.sampled_from(["unhcr", "drc", "nrc", "jips", "x", ""]), max_size=5),
)
def test_garbage_offers_from_a_coordinator_are_refused_never_raised(
    world, envelope: bytes, signature: bytes, parties: list[str]
) -> None:
    config, roster, state, _, _ = world
    decision = decide(
        config, roster, state, Offer(SignedJob(envelope, signature), parties, parties)
    )
    assert not decision.accept and decision.reason and "\n" not in decision.reason


def _with_policy(config: NodeConfig, **changes) -> NodeConfig:
    return dataclasses.replace(config, policy=dataclasses.replace(config.policy, **changes))


def test_require_epsilon_refuses_exact_jobs_on_this_nodes_data(world) -> None:
    config, roster, state, alice, _ = world
    noisy = copy.deepcopy(JOB)
    noisy["disclosure"]["epsilon"] = 0.1
    for strict in (
        _with_policy(config, require_epsilon=True),
        _with_policy(config, require_epsilon_datasets=("households",)),
    ):
        refused = decide(strict, roster, state, _offer(sign_job(JOB, alice)))
        assert not refused.accept
        assert "node unhcr requires `epsilon`" in refused.reason, refused.reason
        assert "households" in refused.reason
        assert decide(strict, roster, state, _offer(sign_job(noisy, alice))).accept
    other = _with_policy(config, require_epsilon_datasets=("census",))
    assert decide(other, roster, state, _offer(sign_job(JOB, alice))).accept
    # a node without data in the job (compute-only here) has nothing to protect
    job = {**JOB, "inputs": ["drc", "nrc"]}
    compute = decide(
        _with_policy(config, require_epsilon=True, partners=("*",)),
        roster,
        state,
        Offer(
            sign_job(job, alice, parties=["drc", "nrc", "unhcr"], inputs=["drc", "nrc"]),
            ["drc", "nrc", "unhcr"],
            ["drc", "nrc"],
        ),
    )
    assert "requires `epsilon`" not in compute.reason


def test_pool_with_refuses_other_input_sets(world) -> None:
    config, roster, state, alice, _ = world
    strict = _with_policy(config, pool_with=("nrc", "unhcr", "drc"))
    assert decide(strict, roster, state, _offer(sign_job(JOB, alice))).accept  # any order
    subset = {**JOB, "inputs": ["unhcr", "drc"]}
    refused = decide(
        strict,
        roster,
        state,
        Offer(
            sign_job(subset, alice, parties=["unhcr", "drc", "jips"], inputs=["unhcr", "drc"]),
            ["unhcr", "drc", "jips"],
            ["unhcr", "drc"],
        ),
    )
    assert not refused.accept
    assert "node unhcr pools data only with exactly drc, nrc, unhcr" in refused.reason


def test_new_policy_keys_parse_and_are_checked(tmp_path: Path) -> None:
    doc = {"require_epsilon": True, "require_epsilon_datasets": ["d"], "pool_with": ["a", "b"]}
    policy = Policy.from_doc(doc, tmp_path / "node.toml")
    assert (policy.require_epsilon, policy.require_epsilon_datasets) == (True, ("d",))
    assert policy.pool_with == ("a", "b")
    assert Policy().require_epsilon is False and Policy().pool_with == ()
    for bad in ({"require_epsilon": "yes"}, {"pool_with": "a"}, {"require_epsilon_datasets": [1]}):
        with pytest.raises(ConfigError):
            Policy.from_doc(bad, tmp_path / "node.toml")


def test_a_refund_returns_charges_of_jobs_that_never_started(world) -> None:
    _, _, state, _, _ = world
    budgets = {"households": 1.0, "census": 1.0}
    state.charge("j1", {"households": 0.4, "census": 0.2}, budgets)
    state.charge("j2", {"households": 0.5}, budgets)
    state.mark_started("j2")
    assert state.refund("j1") == {"households": pytest.approx(0.4), "census": pytest.approx(0.2)}
    assert state.refund("j1") == {}  # idempotent
    assert state.refund("j2") == {}  # its session started: data was computed on
    assert state.refund("unknown") == {}
    assert state.spent("households") == pytest.approx(0.5) and state.spent("census") == 0
    state.mark_started("j2")  # idempotent too


def _node(world, tmp_path: Path):
    from jointstats.node.server import Node
    from jointstats.v1 import wire_pb2

    config, roster, state, alice, _ = world
    state.close()
    roster.save(config.roster)
    return Node(config), alice, wire_pb2


def _events(node) -> list[dict]:
    lines = (node.config.state_dir / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_an_offer_refused_after_charging_and_an_abort_before_start_refund(
    world, tmp_path: Path
) -> None:
    node, alice, wire_pb2 = _node(world, tmp_path)
    job = copy.deepcopy(JOB)
    job["disclosure"]["epsilon"] = 0.6
    signed = sign_job(job, alice)

    def offer(signed: SignedJob, job_id: str):
        return wire_pb2.JobOffer(
            job_id=job_id,
            envelope=signed.envelope,
            signature=signed.signature,
            parties=PARTIES,
            data_parties=PARTIES,
        )

    node._on_offer(offer(signed, "not-the-signed-id"))  # refused after decide charged it
    assert node.state.spent("households") == 0
    refunded = [e for e in _events(node) if e["event"] == "EPSILON_REFUNDED"]
    assert refunded and refunded[0]["fields"]["epsilon_refunded"] == {"households": 0.6}

    second = sign_job(job, alice)
    job_id = json.loads(second.envelope)["job_id"]
    node._on_offer(offer(second, job_id))
    assert job_id in node.offers and node.state.spent("households") == pytest.approx(0.6)
    node._on_abort(wire_pb2.SessionAbort(job_id=job_id, reason="another node refused"))
    node._on_abort(wire_pb2.SessionAbort(job_id=job_id, reason="again"))
    assert node.state.spent("households") == 0
    assert [e["job_id"] for e in _events(node) if e["event"] == "EPSILON_REFUNDED"][1:] == [job_id]
    node.state.close()


def test_an_approved_job_offered_again_with_other_parties_is_refused_on_recheck(world) -> None:
    """A coordinator re-offers a held, approved job after a reconnect, with the same signed
    envelope but another party list beside it (its own compute node in place of nrc)."""
    config, roster, state, alice, _ = world
    signed = sign_job(JOB, alice)
    first = decide(config, roster, state, _offer(signed))
    assert first.accept
    assert recheck(config, roster, _offer(signed), first.epsilon).accept
    substituted = Offer(signed, ["unhcr", "drc", "jips"], ["unhcr", "drc"])
    with pytest.raises(RefusedError, match="analyst signed"):
        recheck(config, roster, substituted, first.epsilon)

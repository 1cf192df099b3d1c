"""Grants with an end: `expires` and `purpose` on analyst entries; client.toml key checks."""

from __future__ import annotations

import dataclasses
import datetime
import re
from pathlib import Path

import pytest

from jointstats.config import ClientConfig, GrantTerms, Policy
from jointstats.errors import ConfigError
from jointstats.node.policy import Offer, decide
from tests.conftest import JOB
from tests.unit.test_node_decision import PARTIES, sign_job, world  # noqa: F401 (fixture)

FP = "ab" * 32


def _policy(**entry: object) -> Policy:
    doc = {"analysts": [{"fingerprint": FP, "datasets": {"households": ["*"]}, **entry}]}
    return Policy.from_doc(doc, Path("policy.toml"))


def test_expires_and_purpose_are_read_from_a_toml_date_or_text() -> None:
    terms = _policy(expires=datetime.date(2027, 6, 30), purpose="IDP profiling", name="ana")
    assert terms.terms[FP] == GrantTerms("ana", datetime.date(2027, 6, 30), "IDP profiling")
    assert _policy(expires="2027-06-30").terms[FP].expires == datetime.date(2027, 6, 30)
    assert _policy().terms[FP].expires is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"expires": "next june"}, "expires must be a date"),
        ({"expires": datetime.datetime(2027, 6, 30, 12)}, "expires must be a date"),
        ({"expire": datetime.date(2027, 6, 30)}, "unknown key(s) in [[analysts]]: expire"),
        ({"purpose": 3}, "name and purpose must be text"),
    ],
)
def test_bad_grant_entries_are_one_line_config_errors(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _policy(**entry)


def test_the_last_day_still_counts() -> None:
    terms = GrantTerms(expires=datetime.date(2027, 6, 30))
    assert not terms.expired(datetime.date(2027, 6, 30))
    assert terms.expired(datetime.date(2027, 7, 1))


def test_an_expired_grant_refuses_the_job_with_its_date(world) -> None:  # noqa: F811
    config, roster, state, alice, _ = world
    fingerprint = roster.get("alice").signing_fingerprint
    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
    for expires, accepted in ((yesterday + datetime.timedelta(days=1), True), (yesterday, False)):
        policy = dataclasses.replace(
            config.policy, terms={fingerprint: GrantTerms("alice", expires, "test")}
        )
        decision = decide(
            dataclasses.replace(config, policy=policy),
            roster,
            state,
            Offer(sign_job(JOB, alice), PARTIES, PARTIES),
        )
        assert decision.accept is accepted, decision.reason
    assert f"grant expired on {yesterday}" in decision.reason


def test_client_toml_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('coordinator = "127.0.0.1:1"\nroster = "r.toml"\nkeys = "k"\nkey = "x"\n')
    with pytest.raises(ConfigError, match="unknown key"):
        ClientConfig.load(path)
    path.write_text('coordinator = "127.0.0.1:1"\nroster = "r.toml"\nkeys = "k"\n')
    assert ClientConfig.load(path).coordinator == "127.0.0.1:1"

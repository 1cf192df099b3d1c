"""Which accepted offers wait for the operator (policy approval, narrowed or not)."""

from __future__ import annotations

from jointstats.config import Policy
from jointstats.node.policy import Decision, needs_approval
from jointstats.signing import Envelope


def _decision(analyst: str = "ana", datasets: tuple[str, ...] = ("households",)) -> Decision:
    envelope = Envelope({}, "j1", "n", 0.0, analyst, ("a", "b", "c"), ("a", "b"))
    columns = {d: ["region"] for d in datasets}
    return Decision(True, "", envelope, None, None, "fp-" + analyst, columns, 0.0)


def test_default_is_automatic():
    assert not needs_approval(Policy(), _decision())


def test_manual_for_every_job_or_narrowed():
    assert needs_approval(Policy(approval="manual"), _decision())
    narrowed = Policy(approval="manual", approval_datasets=("registry",))
    assert not needs_approval(narrowed, _decision())
    assert needs_approval(narrowed, _decision(datasets=("registry",)))
    by_analyst = Policy(approval="manual", approval_analysts=("fp-eve",))
    assert not needs_approval(by_analyst, _decision())
    assert needs_approval(by_analyst, _decision("eve"))
    assert not needs_approval(Policy(approval_datasets=("households",)), _decision())

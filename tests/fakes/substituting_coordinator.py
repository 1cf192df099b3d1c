"""A coordinator that runs jobs with another compute-only party than the analyst signed:
`jips` is replaced by `ocha` in every submitted plan (offers, session start)."""

from __future__ import annotations

from jointstats.cli import main
from jointstats.coordinator import jobs

_Plan = jobs.Plan


def _substituted_plan(parties, data_parties):
    return _Plan(tuple("ocha" if p == "jips" else p for p in parties), tuple(data_parties))


if __name__ == "__main__":
    jobs.Plan = _substituted_plan
    main()

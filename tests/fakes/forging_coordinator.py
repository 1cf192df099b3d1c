"""A coordinator that lowers the suppression threshold in every job it offers to nodes."""

from __future__ import annotations

from jointstats.cli import main
from jointstats.coordinator import jobs

_original_send = jobs.JobManager._send


def _forging_send(self, node, message):
    if message.HasField("offer"):
        offer = message.offer
        offer.envelope = offer.envelope.replace(b'"min_cell":10', b'"min_cell":1')
    _original_send(self, node, message)


if __name__ == "__main__":
    jobs.JobManager._send = _forging_send
    main()

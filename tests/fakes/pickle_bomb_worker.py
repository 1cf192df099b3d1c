"""A hostile session worker: every MPC message it sends is a crafted pickle whose unpickling
would create the file named by JOINTSTATS_TEST_MARKER. Honest parties must never execute it."""

from __future__ import annotations

import sys

from jointstats.node import relay_link, session_worker
from tests.fakes.bomb import bomb_payload


def _send_bomb(self: relay_link.PeerLink, pc: int, payload: bytes) -> None:
    _original_send(self, pc, bomb_payload())


_original_send = relay_link.PeerLink.send

if __name__ == "__main__":
    relay_link.PeerLink.send = _send_bomb  # type: ignore[method-assign]
    sys.exit(session_worker.main())

"""A session worker whose MPC program first waits, so that tests can act mid-session."""

from __future__ import annotations

import asyncio
import os
import sys

from jointstats.node import session_worker
from jointstats.protocols import crosstab

_original = crosstab.Crosstab.mpc_program


async def _slow_program(self, job, ctx, local):
    await asyncio.sleep(float(os.environ.get("JOINTSTATS_TEST_DELAY", "4")))
    return await _original(self, job, ctx, local)


if __name__ == "__main__":
    crosstab.Crosstab.mpc_program = _slow_program  # type: ignore[method-assign]
    sys.exit(session_worker.main())

"""Node, coordinator and CLI processes start without the data libraries.

Every `jointstats local` run starts a coordinator and one process per node at once on the same
CPUs; numpy, pyarrow, pandas and scipy would add about 0.2 s of import CPU to each
(docs/performance.md). They are loaded by the session workers, which fork from a fork server
that imported them once. A fresh interpreter is needed: this test process has them loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numpy", "pyarrow", "pandas", "scipy", "anyascii")
ENTRY_POINTS = (
    "jointstats.cli",
    "jointstats.node.server",
    "jointstats.coordinator.server",
    "jointstats.serve",  # how `jointstats local` starts its nodes and coordinator
    "jointstats.local",  # `jointstats local` starts its processes before it imports more
)


def _loaded_after(module: str) -> list[str]:
    code = (
        f"import json, sys, {module}; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_imports_no_data_library(module: str) -> None:
    assert _loaded_after(module) == []

"""A node whose network goes silent (no FIN, no RST: a cable pulled, a NAT entry expired, a
laptop suspended) is found dead by both ends within the keepalive bounds, its job fails naming
it, and it comes back once the network does.

`python -m tests.integration.test_black_hole` measures the detection times instead (the figures
in docs/security.md, "Peers that disappear").
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jointstats.errors import JobFailed
from jointstats.local import LocalFederation, LocalNode
from tests.conftest import AGENCIES, JOB, REPO, make_households, pooled
from tests.plaintext import expected_crosstab
from tests.proxy import CuttableProxy

# The session sleeps before its MPC program, so the job is mid-session when the link dies. The
# session timeout is far beyond the bound below: only the dead link may fail the job in time.
SLOW = {
    "JOINTSTATS_SESSION_WORKER": "tests.fakes.slow_worker",
    "PYTHONPATH": str(REPO),
    "JOINTSTATS_TEST_DELAY": "4",
}
SESSION_TIMEOUT = 300
BOUND_SECONDS = 45.0  # generous: the keepalive settings give ~15 s; gRPC's own default ~70 s


def _federation(data_dir: Path, workdir: Path) -> tuple[LocalFederation, CuttableProxy]:
    """The three agencies; nrc reaches the coordinator (Connect and Relay) through the proxy."""
    holder: dict[str, LocalFederation] = {}
    proxy = CuttableProxy(lambda: holder["fed"].address)
    nodes = [
        LocalNode(
            a,
            {"households": data_dir / a / "households.csv"},
            env=SLOW,
            coordinator=proxy.address if a == "nrc" else "",
        )
        for a in AGENCIES
    ]
    holder["fed"] = LocalFederation(nodes, workdir, session_timeout=SESSION_TIMEOUT)
    return holder["fed"], proxy


def _wait_mpc(fed: LocalFederation, job_id: str) -> None:
    """Until every party is past its session handshake: a peer silent during the handshake
    fails the session after HANDSHAKE_SECONDS anyway, whatever the transport notices."""
    deadline = time.monotonic() + 30
    while True:
        nodes = fed.client.status(job_id).nodes
        if nodes and all(s == "running" and r == "mpc" for s, r in nodes.values()):
            return
        assert time.monotonic() < deadline, f"the session never reached MPC: {nodes}"
        time.sleep(0.05)


class _LogWatch:
    """Lines a process logs from now on that match a pattern."""

    def __init__(self, path: Path, pattern: str) -> None:
        self._path, self._pattern = path, re.compile(pattern)
        self._offset = path.stat().st_size if path.exists() else 0

    def line(self) -> str | None:
        if not self._path.exists():
            return None
        with open(self._path, "rb") as log:
            log.seek(self._offset)
            text = log.read().decode(errors="replace")
        return next((x for x in text.splitlines() if self._pattern.search(x)), None)


def _until(found: Callable[[], object], deadline: float, what: str) -> None:
    while not found():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_black_holed_node_fails_its_job_and_reconnects_after(data_dir, tmp_path):
    fed, proxy = _federation(data_dir, tmp_path / "fed")
    try:
        with fed:
            job_id = fed.client.submit(JOB)
            _wait_mpc(fed, job_id)
            node_noticed = _LogWatch(fed.log("nrc"), r"coordinator stream ended")
            worker_noticed = _LogWatch(fed.log("nrc"), rf"SESSION_FAILED job={job_id}")
            frozen_at = time.monotonic()
            proxy.freeze()
            with pytest.raises(JobFailed, match="nrc"):
                fed.client.wait(job_id, timeout=BOUND_SECONDS)
            # the node's own Connect stream, and its session worker's Relay stream, found the
            # silence too (before thaw(): no close may travel through the proxy to tell them)
            deadline = frozen_at + BOUND_SECONDS
            _until(node_noticed.line, deadline, "the node never noticed its dead connection")
            _until(worker_noticed.line, deadline, "nrc's session worker is still waiting")
            assert all(p.poll() is None for p in fed.processes.values()), "a process exited"
            proxy.thaw()
            fed.client.wait_for_nodes(list(AGENCIES), timeout=30)
            result = fed.client.run(JOB, timeout=60)
            expected = expected_crosstab(pooled(data_dir), JOB["by"], JOB["domains"], 10)
            assert list(result.table["suppressed"]) == list(expected["suppressed"])
            released = ~expected["suppressed"]
            assert list(result.table.loc[released, "count"]) == list(
                expected.loc[released, "count"]
            )
    finally:
        proxy.close()


# --- measurement (not a test): python -m tests.integration.test_black_hole ------------------


def _note(seen: dict[str, float], what: str, since: float, detail: str = "") -> None:
    seen[what] = time.monotonic() - since
    print(f"  {what:32} {seen[what]:5.1f} s {detail}".rstrip(), flush=True)


def _measure(mid_session: bool, limit: float = 150.0) -> dict[str, float]:
    """Seconds from freeze() until each end noticed; then thaw() and time the recovery."""
    root = Path(tempfile.mkdtemp(prefix="jointstats-black-hole-"))
    rng = np.random.default_rng(20261127)
    for agency, rows in zip(AGENCIES, (300, 180, 90), strict=True):
        (root / "data" / agency).mkdir(parents=True)
        make_households(rng, rows).to_csv(root / "data" / agency / "households.csv", index=False)
    fed, proxy = _federation(root / "data", root / "fed")
    seen: dict[str, float] = {}
    with fed:
        job_id = ""
        if mid_session:
            job_id = fed.client.submit(JOB)
            _wait_mpc(fed, job_id)
        else:
            time.sleep(3.0)  # the streams are open and quiet
        watches = {
            "coordinator: node disconnected": _LogWatch(
                fed.log("coordinator"), r"NODE_DISCONNECTED node=nrc"
            ),
            "node: Connect stream ended": _LogWatch(fed.log("nrc"), r"coordinator stream ended"),
        }
        if mid_session:
            watches["node: session worker failed"] = _LogWatch(
                fed.log("nrc"), rf"SESSION_FAILED job={job_id}"
            )
        frozen_at = time.monotonic()
        proxy.freeze()
        while time.monotonic() - frozen_at < limit:
            for what, watch in watches.items():
                if what not in seen and watch.line() is not None:
                    _note(seen, what, frozen_at)
            if job_id and "job failed" not in seen:
                status = fed.client.status(job_id)
                if status.state == "failed":
                    _note(seen, "job failed", frozen_at, f"({status.reason})")
            if len(seen) == len(watches) + bool(job_id):
                break
            time.sleep(0.1)
        thawed_at = time.monotonic()
        proxy.thaw()
        fed.client.wait_for_nodes(list(AGENCIES), timeout=120)
        fed.client.run(JOB, timeout=120)
        _note(seen, "thaw() to a new job released", thawed_at)
    proxy.close()
    shutil.rmtree(root, ignore_errors=True)
    return seen


if __name__ == "__main__":
    for mid_session in (False, True):
        print("mid-session:" if mid_session else "idle:", flush=True)
        _measure(mid_session)
    sys.exit(0)

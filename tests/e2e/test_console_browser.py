"""The operator console in a real headless Chromium: pending jobs with their egress
statements, approve and deny by clicking, grants, ledger, audit log; and its locks (token,
host, token in the form body). Skips only when chromium is missing outside CI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jointstats.audit import AuditLog
from jointstats.keys import Identity
from jointstats.node.state import Approval, NodeState
from tests.e2e.owner_world import owner_world
from tests.system import require_tool

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
STATEMENT = {
    "job_id": "",
    "kind": "crosstab",
    "analyst": "alice",
    "purpose": "IDP profiling 2026",
    "datasets": {"households": ["region", "displacement_status"]},
    "rows": None,
    "outflows": [
        {
            "to": ["drc", "jips"],
            "kind": "MPC",
            "phase": "input",
            "payload_bytes": 96,
            "at_most": False,
            "text": "12 Shamir shares of cell counts to each of drc, jips",
        },
    ],  # fmt: skip
    "table": "4 x 3 = 12 cells (count)",
    "disclosure": "cells with a count below 10 are suppressed",
    "epsilon": {"households": {"charged": 0.3, "budget": 1.0, "left": 0.7}},
    "leakage": "partners learn nothing beyond the released table",
}


def _chromium() -> str:
    return require_tool(("chromium", "chromium-browser"), "chromium")


def _hold(state: NodeState, job_id: str, analyst: str) -> None:
    job = {"kind": "crosstab", "dataset": "households", "by": ["region"]}
    now = time.time()
    state.hold(
        Approval(
            job_id, now, now + 3600, analyst, "IDP profiling 2026",
            json.dumps({"job": job}).encode(), b"sig", ["unhcr", "drc", "jips"],
            ["unhcr", "drc"], 0.3, {**STATEMENT, "job_id": job_id}, "pending",
        )
    )  # fmt: skip


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    config = owner_world(tmp_path)
    state = NodeState(tmp_path / "state" / "node.sqlite")
    state.charge("j-old", {"households": 0.3}, {"households": 1.0})
    _hold(state, "job-approve-me", "alice")
    _hold(state, "job-deny-me", "alice")
    state.close()
    audit = AuditLog(tmp_path / "state" / "audit.jsonl", Identity.load(tmp_path / "keys/unhcr"),
                     "unhcr")  # fmt: skip
    audit.append("JOB_RECEIVED", "j-old", "alice", datasets=["households"])
    audit.append("RESULT_RELEASED", "j-old", "alice", rows_used=40, epsilon_charged=0.3)
    exe = shutil.which("jointstats") or str(Path(sys.executable).with_name("jointstats"))
    process = subprocess.Popen(
        [exe, "node", "console", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        process.stdout.readline()
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        yield url, token, tmp_path
    finally:
        process.terminate()
        process.wait(10)


def _status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_console_refuses_requests_without_the_token(console) -> None:
    url, token, _ = console
    base = url.split("?")[0]
    assert _status(urllib.request.Request(base)) == 403
    assert _status(urllib.request.Request(base + "?token=" + "x" * len(token))) == 403
    assert _status(urllib.request.Request(base, headers={"X-Jointstats-Token": token})) == 200
    rebinding = urllib.request.Request(url, headers={"Host": f"evil.example:{url.split(':')[2]}"})
    assert _status(rebinding) == 421
    # a POST with the token only in the URL (as a cross-site form could not have it in the
    # body) is refused; so is one from another origin
    body = urllib.parse.urlencode({"job_id": "job-approve-me"}).encode()
    assert _status(urllib.request.Request(base + "approve?token=" + token, body)) == 403
    form = urllib.parse.urlencode({"job_id": "job-approve-me", "token": token}).encode()
    cross = urllib.request.Request(base + "approve", form, {"Origin": "http://evil.example"})
    assert _status(cross) == 403


def test_approve_and_deny_in_a_real_browser(console) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    url, _, root = console
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        assert "2 job(s) waiting" in page.inner_text("header")
        assert "12 Shamir shares of cell counts to each of drc, jips" in page.inner_text("#pending")
        assert "verified: 2 entries" in page.inner_text("#audit")
        grants = page.inner_text("#grants")
        assert "alice" in grants and "2027-06-30" in grants and "IDP profiling 2026" in grants
        assert "0.7" in page.inner_text("#ledger")  # 1.0 budget, 0.3 spent
        page.screenshot(path=str(SHOTS / "console-pending.png"), full_page=True)

        page.click("#job-job-approve-me button.approve")
        page.wait_for_selector("p.note")
        assert "approved job job-approve-me" in page.inner_text("p.note")
        page.fill("#job-job-deny-me input[name=reason]", "purpose not covered by our agreement")
        page.click("#job-job-deny-me button.deny")
        page.wait_for_selector("text=denied job job-deny-me")
        assert "No job is waiting for approval." in page.inner_text("#pending")
        page.screenshot(path=str(SHOTS / "console-decided.png"), full_page=True)
        browser.close()
    state = NodeState(root / "state" / "node.sqlite")
    approved, denied = state.approval("job-approve-me"), state.approval("job-deny-me")
    state.close()
    assert approved is not None and approved.status == "approved"
    assert denied is not None and denied.status == "denied"
    assert denied.reason == "purpose not covered by our agreement"
    assert denied.decided_by.startswith("console")

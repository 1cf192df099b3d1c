"""`jointstats node console`: the operator's page, served on 127.0.0.1 only (DESIGN §5.5).

One server-rendered HTML page: jobs waiting for approval with their egress statements and
approve / deny buttons, the grants, the ε ledger and the audit log with its verification
status. It shows job documents, statements, audit entries and ledger figures, never data.

Security: the server binds 127.0.0.1 and answers only requests whose Host is that address (or
localhost) on its port (no DNS rebinding). Every request carries a random token, printed at
start: in the URL (`?token=`) or a header (`X-Jointstats-Token`, `Authorization: Bearer`),
compared in constant time. Approve and deny are POSTs whose *form body* must carry the token
(a cross-site form cannot, as it does not know it), with a same-origin `Origin` when the
browser sends one. Responses forbid framing, caching, referrers and scripts.
"""

from __future__ import annotations

import datetime
import getpass
import hmac
import html
import json
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from jointstats.audit import verify
from jointstats.config import NodeConfig
from jointstats.errors import JointstatsError, RefusedError
from jointstats.keys import Roster
from jointstats.node import owner

log = logging.getLogger(__name__)
MAX_BODY = 16_384
AUDIT_ROWS = 100
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no token to other sites; Origin stays set
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class PendingJob:
    """A job waiting for this operator's decision, as the console shows it."""

    job_id: str
    analyst: str
    purpose: str
    received: str
    statement: list[str] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)


class ApprovalQueue(Protocol):
    """The seam to the node's approval queue (jointstats node pending/approve/deny)."""

    available: bool

    def pending(self) -> list[PendingJob]: ...

    def approve(self, job_id: str) -> str: ...

    def deny(self, job_id: str, reason: str) -> str: ...


class NoQueue:
    """A node without manual approval: nothing ever waits."""

    available = False

    def pending(self) -> list[PendingJob]:
        return []

    def approve(self, job_id: str) -> str:
        raise JointstatsError("this node has no approval queue")

    def deny(self, job_id: str, reason: str) -> str:
        raise JointstatsError("this node has no approval queue")


# ---- rendering ----------------------------------------------------------------------------

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f5f7;color:#1d2330}
header{background:#1d3557;color:#fff;padding:14px 28px;display:flex;gap:24px;
align-items:baseline;flex-wrap:wrap}
header h1{font-size:20px;margin:0}
main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:14px 18px;
margin:16px 0}
h2{font-size:17px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e6e8ec;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
code,pre{font:13px/1.4 ui-monospace,"DejaVu Sans Mono",monospace}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:8px 10px;
white-space:pre-wrap;margin:6px 0}
.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}
.muted{color:#5b6475}.note{background:#e8f3ff;border:1px solid #9cc7f5;padding:8px 12px;
border-radius:6px}
.job{border:1px solid #d8dce3;border-radius:8px;padding:10px 14px;margin:10px 0}
.actions{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-top:8px}
button{font:inherit;padding:6px 16px;border-radius:6px;border:1px solid;cursor:pointer}
.approve{background:#1a7f37;color:#fff;border-color:#146c2e}
.deny{background:#fff;color:#b42318;border-color:#b42318}
input[type=text]{font:inherit;padding:5px 8px;width:24em;border:1px solid #b9c0cc;
border-radius:6px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _pending(queue: ApprovalQueue, token: str) -> str:
    if not queue.available:
        return '<p class="muted">This node approves jobs by its policy (no manual approval).</p>'
    jobs = queue.pending()
    if not jobs:
        return '<p class="muted">No job is waiting for approval.</p>'
    hidden = f'<input type="hidden" name="token" value="{_e(token)}">'
    parts = []
    for job in jobs:
        jid = _e(job.job_id)
        statement = "\n".join(job.statement) or "(no egress statement)"
        document = json.dumps(job.document, indent=2, ensure_ascii=False)
        parts.append(
            f'<div class="job" id="job-{jid}"><div><b>job <code>{jid}</code></b> · analyst '
            f"<b>{_e(job.analyst)}</b> · received {_e(job.received)}</div>"
            f"<div>purpose: {_e(job.purpose or '(none given)')}</div>"
            f"<div><b>What leaves this node</b></div><pre>{_e(statement)}</pre>"
            f"<details><summary>signed job document</summary><pre>{_e(document)}</pre>"
            f'</details><div class="actions">'
            f'<form method="post" action="/approve">{hidden}'
            f'<input type="hidden" name="job_id" value="{jid}">'
            f'<button class="approve" type="submit" name="do" value="approve">Approve</button>'
            f'</form><form method="post" action="/deny">{hidden}'
            f'<input type="hidden" name="job_id" value="{jid}">'
            f'<input type="text" name="reason" required placeholder="reason sent to the analyst"'
            f' aria-label="reason for denying {jid}">'
            f'<button class="deny" type="submit" name="do" value="deny">Deny</button>'
            f"</form></div></div>"
        )
    return "".join(parts)


def _grants(config: NodeConfig, roster: Roster | None) -> str:
    rows = []
    for grant in owner.grants(config, roster):
        datasets = "<br>".join(
            f"<b>{_e(d)}</b>: {_e(owner.columns_text(cols))}" for d, cols in grant.datasets.items()
        )
        status = _e(grant.status)
        if grant.status.startswith("EXPIRED"):
            status = f'<span class="bad">{status}</span>'
        rows.append(
            [
                _e(grant.analyst),
                f"<code>{_e(grant.fingerprint[:16])}…</code>",
                datasets or '<span class="muted">none (compute only)</span>',
                status,
                _e(grant.purpose),
            ]
        )
    head = ["analyst", "signing fingerprint", "datasets and columns", "valid", "purpose"]
    return _table(head, rows, "No analyst may use this node (the default policy).")


def _ledger(config: NodeConfig) -> str:
    budgets = [
        [_e(b.dataset), f"{b.budget:g}", f"{b.spent:g}", f"<b>{b.left:g}</b>"]
        for b in owner.budgets(config)
    ]
    charges = [
        [_e(c.at), f"<code>{_e(c.job_id)}</code>", _e(c.dataset), f"{c.epsilon:g}"]
        for c in owner.charges(config, 20)
    ]
    return (
        _table(["dataset", "ε budget", "ε spent", "ε left"], budgets, "No datasets.")
        + "<h3>Recent charges</h3>"
        + _table(["time (UTC)", "job", "dataset", "ε"], charges, "Nothing charged yet.")
    )


def _audit(path: Path) -> tuple[str, str]:
    """(status line, table of the newest entries)."""
    if not path.exists():
        return '<span class="muted">no audit log yet</span>', ""
    report = verify(path)
    if report.ok:
        status = (
            f'<span class="ok">verified: {report.entries} entries, chain and signatures '
            f'intact</span> <span class="muted">head <code>{_e(report.head[:16])}…</code></span>'
        )
    else:
        where = f"line {report.first_bad_line}" if report.first_bad_line else "file"
        status = f'<span class="bad">BROKEN at {_e(where)}: {_e(report.reason)}</span>'
    entries = []
    with open(path, "rb") as lines:
        for raw in lines:
            try:
                entries.append(json.loads(raw))
            except ValueError:
                entries.append({"event": "(unreadable line)"})
    rows = []
    for entry in reversed(entries[-AUDIT_ROWS:]):
        fields = entry.get("fields") if isinstance(entry.get("fields"), dict) else {}
        summary = ", ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v)}"[:60]
            for k, v in fields.items()
            if k != "signature"
        )
        rows.append(
            [
                _e(entry.get("seq", "?")),
                _e(str(entry.get("time", ""))[:19].replace("T", " ")),
                f"<b>{_e(entry.get('event', ''))}</b>",
                f"<code>{_e(entry.get('job_id', ''))}</code>",
                _e(str(entry.get("principal", ""))[:20]),
                f'<span class="muted">{_e(summary[:240])}</span>',
            ]
        )
    head = ["seq", "time (UTC)", "event", "job", "principal", "fields"]
    return status, _table(head, rows, "The log is empty.")


def render_page(
    config: NodeConfig, queue: ApprovalQueue, token: str, roster: Roster | None, note: str = ""
) -> str:
    status, audit_table = _audit(Path(config.state_dir) / "audit.jsonl")
    waiting = len(queue.pending()) if queue.available else 0
    note_html = f'<p class="note" role="status">{_e(note)}</p>' if note else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>jointstats · node {_e(config.name)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>Node {_e(config.name)}</h1><span>{waiting} job(s) waiting</span>"
        f"<span>audit log: {status}</span></header><main>{note_html}"
        f'<section id="pending"><h2>Waiting for approval</h2>{_pending(queue, token)}</section>'
        f'<section id="grants"><h2>Grants</h2>{_grants(config, roster)}</section>'
        f'<section id="ledger"><h2>ε ledger</h2>{_ledger(config)}</section>'
        f'<section id="audit"><h2>Audit log</h2><p>{status}</p>{audit_table}</section>'
        "</main></body></html>"
    )


# ---- serving ------------------------------------------------------------------------------


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, config: NodeConfig, queue: ApprovalQueue, port: int = 0, token: str | None = None
    ) -> None:
        self.config, self.queue = config, queue
        self.token = token or secrets.token_urlsafe(32)
        self.lock = threading.Lock()  # one decision at a time
        try:
            self.roster: Roster | None = Roster.load(config.roster)
        except JointstatsError:
            self.roster = None
        super().__init__(("127.0.0.1", port), ConsoleHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"


class ConsoleHandler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "jointstats-console"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        path = self.path.split("?", 1)[0]  # never log the token
        log.info("console %s %s %s", self.command, path, args[1] if len(args) > 1 else "")

    def _send(self, status: int, body: str, extra: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(status)
        for name, value in {**HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refuse(self, status: int, why: str) -> None:
        self._send(status, f"<!doctype html><title>{status}</title><p>{_e(why)}</p>")

    def _host_ok(self) -> bool:
        port = self.server.port
        return self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}")

    def _header_token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        return self.headers.get("X-Jointstats-Token")

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        if not self._host_ok():
            return self._refuse(421, "wrong host")
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        token = self._header_token() or (query.get("token") or [None])[0]
        if not _same(token, self.server.token):
            return self._refuse(403, "missing or wrong token: open the URL the console printed")
        if url.path != "/":
            return self._refuse(404, "not found")
        note = (query.get("note") or [""])[0][:200]
        try:
            page = render_page(self.server.config, self.server.queue, self.server.token,
                               self.server.roster, note)  # fmt: skip
        except JointstatsError as exc:
            return self._refuse(500, str(exc))
        self._send(200, page)

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._refuse(421, "wrong host")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers['Host']}":
            return self._refuse(403, "cross-origin request refused")
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            return self._refuse(413, "empty or oversized form")
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        if not _same((form.get("token") or [None])[0], self.server.token):
            return self._refuse(403, "missing or wrong token in the form")
        job_id = (form.get("job_id") or [""])[0].strip()
        reason = (form.get("reason") or [""])[0].strip()
        actions: dict[str, Callable[[], str]] = {
            "/approve": lambda: self.server.queue.approve(job_id),
            "/deny": lambda: self.server.queue.deny(job_id, reason),
        }
        if self.path not in actions:
            return self._refuse(404, "not found")
        if not job_id or (self.path == "/deny" and not reason):
            return self._refuse(400, "give the job id (and, to deny, a reason)")
        try:
            with self.server.lock:
                note = actions[self.path]()
        except JointstatsError as exc:
            note = f"error: {exc}"
        query = urllib.parse.urlencode({"token": self.server.token, "note": note})
        self._send(303, "", {"Location": f"/?{query}"})


class StateQueue:
    """The node's own approval queue (node.sqlite in its state_dir, written by `jointstats
    node approve|deny` and this console, read by the running node)."""

    available = True

    def __init__(self, config: NodeConfig) -> None:
        self.path = Path(config.state_dir) / "node.sqlite"
        self.by = f"console ({getpass.getuser()})"

    def _state(self) -> Any:
        from jointstats.node.state import NodeState

        return NodeState(self.path)

    def pending(self) -> list[PendingJob]:
        from jointstats.node.egress import render

        state = self._state()
        try:
            held = state.approvals("status = 'pending'")
        finally:
            state.close()
        jobs = []
        for approval in held:
            try:
                document = json.loads(approval.envelope).get("job", {})
            except ValueError:
                document = {}
            expires = _utc(approval.expires)
            jobs.append(
                PendingJob(
                    approval.job_id,
                    approval.analyst,
                    approval.purpose,
                    f"{_utc(approval.received)}, expires {expires}",
                    render(approval.statement) if approval.statement else [],
                    document,
                )
            )
        return jobs

    def _decide(self, job_id: str, status: str, reason: str) -> None:
        state = self._state()
        try:
            if not state.decide(job_id, status, reason, self.by):
                raise RefusedError(f"job {job_id} is not waiting for approval (decided already?)")
        finally:
            state.close()

    def approve(self, job_id: str) -> str:
        self._decide(job_id, "approved", "")
        return f"approved job {job_id}: the node runs it"

    def deny(self, job_id: str, reason: str) -> str:
        self._decide(job_id, "denied", reason)
        return f"denied job {job_id}: the analyst sees the reason"


def _utc(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def approval_queue(config: NodeConfig) -> ApprovalQueue:
    """The node's approval queue when this version has one, else a queue that is always empty."""
    from jointstats.node import state

    if not hasattr(state.NodeState, "approvals"):
        return NoQueue()
    return StateQueue(config)

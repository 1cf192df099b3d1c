"""`jointstats audit …`: check and read a node's audit log (see docs/audit.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jointstats.audit import VerifyReport, verify
from jointstats.errors import AuditError, ConfigError

audit_app = typer.Typer(no_args_is_help=True, help="Verify and show a node's audit log.")
out = Console()
SUMMARY_WIDTH = 80


def _fail(file: Path, report: VerifyReport) -> AuditError:
    where = f"line {report.first_bad_line}" if report.first_bad_line else "file"
    return AuditError(f"{file}: {where}: {report.reason}")


@audit_app.command("verify")
def audit_verify(
    file: Annotated[Path, typer.Argument(help="The audit log (audit.jsonl).")],
    key_from: Annotated[
        Path | None, typer.Option("--key-from", help="Roster holding the signer's key.")
    ] = None,
    member: Annotated[str | None, typer.Option(help="The signer's name in that roster.")] = None,
) -> None:
    """Check the hash chain and every signature; name the first bad line."""
    public_key = None
    if (key_from is None) != (member is None):
        raise ConfigError("--key-from and --member go together")
    if key_from is not None and member is not None:
        from jointstats.keys import Roster

        public_key = Roster.load(key_from).get(member).sign_public
    report = verify(file, public_key)
    if not report.ok:
        raise _fail(file, report)
    out.print(f"{file}: {report.entries} entries, chain intact", markup=False, soft_wrap=True)
    out.print(f"head {report.head}", markup=False, highlight=False)


def _summary(fields: Any) -> str:
    if not isinstance(fields, dict):
        return "?"
    parts = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{name}={_short(text, 24)}")
    text = ", ".join(parts)
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 1] + "…"


def _short(text: str, width: int = 12) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@audit_app.command("show")
def audit_show(
    file: Annotated[Path, typer.Argument(help="The audit log (audit.jsonl).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full entries, one JSON object per line.")
    ] = False,
) -> None:
    """Print the log as a table; fails after the table when the chain is broken."""
    report = verify(file)
    if report.first_bad_line is None and not report.ok:
        raise _fail(file, report)
    if as_json:
        _print_json(file)
        if not report.ok:
            raise _fail(file, report)
        return
    table = Table("seq", "time (UTC)", "event", "job", "principal", "fields", box=box.SIMPLE_HEAD)
    for column in table.columns[:3]:
        column.no_wrap = True
    table.columns[-1].overflow = "fold"
    egress: dict[str, dict[str, Any]] = {}  # job -> statement, sent
    with open(file, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                entry = json.loads(raw)
                _collect_egress(egress, entry)
                time = str(entry["time"])[:19].replace("T", " ")
                cells = [str(entry["seq"]), time, str(entry["event"]), str(entry["job_id"])]
                cells += [_short(str(entry["principal"])), _summary(entry["fields"])]
            except (ValueError, TypeError, KeyError, RecursionError):
                cells = ["?", "", "", "", "", f"line {number} is not an audit entry"]
            style = "red" if number == report.first_bad_line else None
            table.add_row(*(Text(cell, style=style) for cell in cells))
    out.print(table)
    _print_egress(egress)
    if not report.ok:
        raise _fail(file, report)


def _print_json(file: Path) -> None:
    """Every entry in full, as one compact JSON line (a line that is not JSON is skipped)."""
    with open(file, "rb") as lines:
        for raw in lines:
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            typer.echo(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))


def _collect_egress(egress: dict[str, dict[str, Any]], entry: Any) -> None:
    """The egress statement (JOB_ACCEPTED or JOB_QUEUED) and what was sent (RESULT_RELEASED)."""
    fields = entry.get("fields") if isinstance(entry, dict) else None
    if not isinstance(fields, dict):
        return
    if isinstance(fields.get("egress"), dict):
        egress.setdefault(str(entry["job_id"]), {})["statement"] = fields["egress"]
    if entry.get("event") == "RESULT_RELEASED" and isinstance(fields.get("sent"), list):
        egress.setdefault(str(entry["job_id"]), {})["sent"] = fields["sent"]


def _print_egress(egress: dict[str, dict[str, Any]]) -> None:
    """Per job that ran: the statement made before it, then the bytes sent per peer, kind
    and phase beside the statement's prediction (payload bytes, without framing)."""
    from jointstats.node.egress import render, sent_lines

    for job_id, parts in egress.items():
        if "sent" not in parts:
            continue
        out.print(f"job {job_id}: egress statement", markup=False, highlight=False)
        if "statement" in parts:
            for line in render(parts["statement"]):
                out.print("  " + line, markup=False, highlight=False, soft_wrap=True)
        out.print(f"job {job_id}: sent (peer, kind, phase)", markup=False, highlight=False)
        for line in sent_lines(parts.get("statement"), parts["sent"]):
            out.print(line, markup=False, highlight=False, soft_wrap=True)

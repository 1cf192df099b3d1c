"""`jointstats node pending|show|approve|deny`: the operator's decisions on jobs that a node
with `approval = "manual"` holds (docs/operator.md, "Approving jobs").

These commands write to the node's state database (state_dir/node.sqlite); the running node
picks each decision up within a second, logs it and tells the coordinator. They work while
the node is stopped too: it acts on the decisions when it starts.
"""

from __future__ import annotations

import datetime
import getpass
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointstats.cli import node_app
from jointstats.errors import ConfigError, JobError

out = Console()
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Node config (TOML).")]
MAX_REASON = 500


def _state(config: Path):
    from jointstats.config import NodeConfig
    from jointstats.node.state import NodeState

    node = NodeConfig.load(config)
    path = node.state_dir / "node.sqlite"
    if not path.exists():
        raise ConfigError(f"{path} does not exist: has this node run yet?")
    return NodeState(path)


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _print(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


@node_app.command("pending")
def node_pending(
    config: ConfigOption = Path("node.toml"),
    all_jobs: Annotated[bool, typer.Option("--all", help="Also decided jobs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """List the jobs waiting for this node's approval: id, analyst, purpose, expiry."""
    state = _state(config)
    approvals = state.approvals() if all_jobs else state.approvals("status = 'pending'")
    if as_json:
        keys = ("job_id", "analyst", "purpose", "received", "expires", "status", "reason")
        _print(json.dumps([{k: getattr(a, k) for k in keys} for a in approvals], indent=2))
        return
    if not approvals:
        _print("no job waits for approval")
        return
    for approval in approvals:
        status = "" if approval.status == "pending" else f"  [{approval.status}]"
        _print(
            f"{approval.job_id}  {approval.analyst}  expires {_when(approval.expires)}{status}\n"
            f"    purpose: {approval.purpose or '(none given)'}"
        )


@node_app.command("show")
def node_show(
    job_id: Annotated[str, typer.Argument(help="The job's id (from `node pending`).")],
    config: ConfigOption = Path("node.toml"),
) -> None:
    """Print a held job, as the analyst signed it, and this node's egress statement."""
    from jointstats.node.egress import render

    approval = _state(config).approval(job_id)
    if approval is None:
        raise JobError(f"no job {job_id} in this node's approval queue")
    envelope = json.loads(approval.envelope)
    _print(f"status: {approval.status} {approval.reason}".rstrip())
    _print(f"signed by {approval.analyst}; expires {_when(approval.expires)}")
    _print(f"parties: {', '.join(approval.parties)} (inputs: {', '.join(approval.data_parties)})")
    _print("job:")
    _print(json.dumps(envelope["job"], indent=2, ensure_ascii=False))
    _print("egress statement:")
    for line in render(approval.statement):
        _print("  " + line)


def _decide(config: Path, job_id: str, status: str, reason: str) -> None:
    state = _state(config)
    approval = state.approval(job_id)
    if approval is None:
        raise JobError(f"no job {job_id} in this node's approval queue")
    if approval.status == "pending" and approval.expires < time.time():
        raise JobError(f"job {job_id} expired at {_when(approval.expires)}; it cannot run")
    if not state.decide(job_id, status, reason, getpass.getuser()):
        raise JobError(f"job {job_id} is {approval.status} already")
    _print(f"job {job_id} {status}; the node acts on it within a second (when it runs)")


@node_app.command("approve")
def node_approve(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    config: ConfigOption = Path("node.toml"),
) -> None:
    """Let a held job run (the node re-checks it against its policy first)."""
    _decide(config, job_id, "approved", "")


@node_app.command("deny")
def node_deny(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    reason: Annotated[str, typer.Option(help="Why; the analyst sees it in the job's failure.")],
    config: ConfigOption = Path("node.toml"),
) -> None:
    """Refuse a held job; the reason reaches the analyst."""
    reason = " ".join(reason.split())
    if not reason or len(reason) > MAX_REASON:
        raise typer.BadParameter(f"give a reason of 1 to {MAX_REASON} characters")
    _decide(config, job_id, "denied", reason)

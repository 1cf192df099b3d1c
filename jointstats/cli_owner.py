"""`jointstats node check|grants|rehearse|console`: the data owner's commands (DESIGN §5.5;
docs/operator.md, "The owner's day")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointstats.cli import node_app
from jointstats.errors import ConfigError

out = Console()
err = Console(stderr=True)
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="Node config (TOML).", show_default=False)
]


def _say(text: str, style: str | None = None) -> None:
    out.print(text, markup=False, highlight=False, style=style, soft_wrap=True)


def _config(config: Path | None, positional: Path | None = None):
    from jointstats.config import NodeConfig

    path = config or positional
    if path is None:
        raise ConfigError("give the node config: --config node.toml")
    return NodeConfig.load(path)


@node_app.command("check")
def node_check(
    config_file: Annotated[Path | None, typer.Argument(help="Node config (TOML).")] = None,
    config: ConfigOption = None,
    reach: Annotated[
        bool, typer.Option("--reach", help="Also try a TLS handshake with the coordinator.")
    ] = False,
) -> None:
    """Preflight: datasets, keys, name and policy, checked before going live.

    Every dataset is summarised (rows, columns, types and null counts, never a value); this
    node's keys and name are checked against the roster, and the policy's analysts and partners.
    """
    from jointstats.node.check import check_node, preflight, summary_lines

    node = _config(config, config_file)
    for summary in check_node(node):
        for line in summary_lines(summary):
            _say(line)
    if node.datasets:
        _say("all datasets ok")
    else:
        _say(f"node {node.name} is compute-only: no datasets to check")
    findings = preflight(node, reach)
    marks = {"ok": ("ok", None), "warning": ("warning", "yellow"), "problem": ("problem", "red")}
    for finding in findings:
        label, style = marks[finding.level]
        _say(f"{label}: {finding.text}", style)
    problems = sum(f.level == "problem" for f in findings)
    if problems:
        raise ConfigError(f"node {node.name}: {problems} problem(s) found, see above")


@node_app.command("grants")
def node_grants(config: ConfigOption = None) -> None:
    """Who may use which datasets and columns, until when and for what; ε left per dataset."""
    from jointstats.keys import Roster
    from jointstats.node.owner import budgets, columns_text, grants

    node = _config(config)
    roster = Roster.load(node.roster)
    rows = grants(node, roster)
    _say(f"node {node.name}: {len(rows)} analyst grant(s)")
    for grant in rows:
        style = "red" if grant.status.startswith("EXPIRED") else None
        _say(f"analyst {grant.analyst} (signing {grant.fingerprint[:16]}…)")
        _say(f"  {grant.status}" + (f"; purpose: {grant.purpose}" if grant.purpose else ""), style)
        for dataset, columns in grant.datasets.items():
            _say(f"  {dataset}: {columns_text(columns)}")
        if not grant.datasets:
            _say("  no datasets (compute-only work)")
    _say("ε per dataset (budget, spent, left):")
    for budget in budgets(node):
        _say(f"  {budget.dataset}: {budget.budget:g} budget, {budget.spent:g} spent, "
             f"{budget.left:g} left")  # fmt: skip


@node_app.command("rehearse")
def node_rehearse(
    job: Annotated[Path, typer.Argument(help="Job file (TOML or JSON).")],
    config: ConfigOption = None,
    rows: Annotated[int, typer.Option(help="Invented records per data node.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the invented data.")] = 1,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep the invented data, keys and logs here.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 300.0,
) -> None:
    """Run JOB on loopback on invented data shaped like this node's dataset.

    Only the dataset's schema is used, never a record; partners are simulated. Prints the egress
    statement, the transcript summary and the released table.
    """
    from jointstats.jobs import load_job_file
    from jointstats.progress import print_result
    from jointstats.rehearse import figure_text, rehearse

    node = _config(config)
    doc = load_job_file(job)
    with err.status("rehearsing") as spinner:
        done = rehearse(node, doc, rows, seed, workdir, timeout, spinner.update)
    _say(f"rehearsal of a {done.kind} job on INVENTED data (no record of yours was read)")
    _say("parties: " + ", ".join(done.parties))
    _say("invented records: " + ", ".join(f"{n} {c}" for n, c in done.rows.items()))
    _say(f"egress statement for {node.name}:", "bold")
    for line in done.egress:
        _say(f"  {line}")
    _say("transcript (from each simulated node's audit log):", "bold")
    for line in done.transcript:
        _say(f"  {line.party}: audit log {line.chain}; events {' '.join(line.events) or '-'}")
        if line.figures:
            _say(f"    {figure_text(line.figures)}")
        for sent in line.sent:
            _say(f"    sent {sent}")
    print_result(out, done.result)


@node_app.command("console")
def node_console(
    config: ConfigOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 0,
) -> None:
    """Serve the operator's page on 127.0.0.1 and print its URL with the access token.

    The page shows pending jobs with approve/deny, grants, the ε ledger and the audit log.
    """
    import logging

    from jointstats.node.console import ConsoleServer, approval_queue

    logging.basicConfig(level=logging.WARNING)
    node = _config(config)
    try:
        server = ConsoleServer(node, approval_queue(node), port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
    _say(f"operator console of node {node.name} (127.0.0.1 only; Ctrl-C stops it):")
    _say(server.url)
    out.file.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

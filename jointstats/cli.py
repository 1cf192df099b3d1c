"""The `jointstats` command line. Each command is a thin layer over the library."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointstats.cli_audit import audit_app
from jointstats.errors import ConfigError, JointstatsError


def _flag_type(self: typer.core.TyperOption, ctx: object) -> str | None:
    """typer 0.29 labels every flag `<bool>`, which reads as if `--help` took a value."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
coordinator_app = typer.Typer(no_args_is_help=True, help="Run the coordinator.")
node_app = typer.Typer(no_args_is_help=True, help="Run a node.")
keys_app = typer.Typer(no_args_is_help=True, help="Make keys, certificates and rosters.")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(node_app, name="node")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")

out = Console()
err = Console(stderr=True)
UNWRAPPED = {"soft_wrap": True, "highlight": False}  # fingerprints stay on one line to copy
PlotOption = Annotated[
    Path | None,
    typer.Option(
        "--plot", help="Also draw the released table into FILE.png or FILE.svg (matplotlib)."
    ),
]
ClientConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="JOINTSTATS_CLIENT", help="Analyst client config (TOML)."
    ),
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"jointstats {version('jointstats')}")
        except PackageNotFoundError:
            typer.echo("jointstats (version unknown: not installed as a package)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """jointstats: statistics over several parties' data by secure multi-party computation."""


@coordinator_app.command("serve")
def coordinator_serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="coordinator.toml")],
) -> None:
    """Serve the coordinator (gRPC over mutual TLS)."""
    from jointstats.serve import run

    run("coordinator", config)


@node_app.command("serve")
def node_serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="The node's node.toml.")],
) -> None:
    """Run a node: dial the coordinator, decide on offers, take part in MPC sessions."""
    from jointstats.serve import run

    run("node", config)


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Option(help="Member name as it appears in the roster.")],
    role: Annotated[str, typer.Option(help="coordinator | node | compute | analyst")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the private keys.")],
    host: Annotated[list[str], typer.Option(help="Host names/IPs for the TLS cert.")] = [],  # noqa: B006
    address: Annotated[str, typer.Option(help="host:port (coordinator only).")] = "",
    force: Annotated[
        bool, typer.Option("--force", help="Replace keys already in OUT (they are lost).")
    ] = False,
) -> None:
    """Create a member's keys; share OUT/member.toml (public) with the roster keeper."""
    from jointstats.keys import new_member

    existing = [f for f in ("sign.key", "tls.key", "kx.key") if (out_dir / f).exists()]
    if existing and not force:
        raise ConfigError(
            f"{out_dir} already holds keys ({', '.join(existing)}): a node or coordinator "
            "using them would lose its identity; choose another --out, or add --force"
        )
    member = new_member(out_dir, name, role, host or None, address)
    out.print(f"{member.name} ({member.role})")
    out.print(f"  identity fingerprint: {member.identity_fingerprint}", **UNWRAPPED)
    out.print(
        f"  signing fingerprint (for node policies): {member.signing_fingerprint}", **UNWRAPPED
    )
    out.print(
        f"public entry: {out_dir / 'member.toml'}  (private keys stay in {out_dir})", **UNWRAPPED
    )


@keys_app.command("roster")
def keys_roster(
    members: Annotated[list[Path], typer.Argument(help="member.toml files to include.")],
    out_file: Annotated[Path, typer.Option("--out", help="The roster file to write.")] = Path(
        "roster.toml"
    ),
) -> None:
    """Assemble a roster from members' public entries."""
    from jointstats.keys import Roster, load_member

    roster = Roster()
    for path in members:
        member = load_member(path)
        roster.members[member.name] = member
    roster.coordinator  # noqa: B018 (raises when missing)
    roster.save(out_file)
    keys_show(out_file)


@keys_app.command("show")
def keys_show(roster_file: Annotated[Path, typer.Argument(help="roster.toml")]) -> None:
    """Print a roster's members and certificate fingerprints, for operators to compare."""

    from jointstats.keys import Roster

    out.print(f"roster {roster_file}: compare each identity fingerprint with its owner out of band")
    for member in Roster.load(roster_file).members.values():
        out.print(f"{member.name} ({member.role})", markup=False)
        out.print(f"  identity  {member.identity_fingerprint}", **UNWRAPPED)
        if member.role == "analyst":
            out.print(f"  signing   {member.signing_fingerprint}", **UNWRAPPED)


def _client(config: Path):
    from jointstats.client import Client

    return Client.from_config(config)


@app.command()
def submit(
    job: Annotated[Path, typer.Argument(help="Job file (TOML or JSON).")],
    config: ClientConfigOption = Path("client.toml"),
    wait: Annotated[bool, typer.Option(help="Wait and print the result.")] = False,
    plot: PlotOption = None,
) -> None:
    """Sign the job for the parties the coordinator plans and submit it.

    The plan goes to stderr; stdout gets only the job id, so `id=$(jointstats submit job.toml)`
    works.
    """
    if plot is not None:
        _check_plot(plot)
        if not wait:
            raise typer.BadParameter("--plot needs --wait", param_hint="--plot")
    with _client(config) as client:
        job_id = client.submit(job, on_plan=_show_plan)
        typer.echo(job_id)  # alone on stdout: `id=$(jointstats submit job.toml)`
        if wait:
            released = _follow(client, job_id)
            _show_result(released)
            _plot(released, plot)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The id `submit` printed.")],
    config: ClientConfigOption = Path("client.toml"),
    watch: Annotated[bool, typer.Option(help="Follow until the job ends.")] = False,
) -> None:
    """Show a job's state and each node's part in it."""
    with _client(config) as client:
        if watch:
            with contextlib.suppress(JointstatsError):
                _follow(client, job_id)
        current = client.status(job_id)
    out.print(f"job {current.job_id}: {current.state} {current.reason}", markup=False)
    for node, (state, reason) in current.nodes.items():
        out.print(f"  {node:<16} {state:<10} {reason}", markup=False)
    if current.state == "failed":
        raise typer.Exit(9)


@app.command()
def nodes(
    config: ClientConfigOption = Path("client.toml"),
    wait_for: Annotated[
        str | None,
        typer.Option(
            "--wait-for", metavar="NAME,...", help="Wait until these members are connected."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait-for.")] = 60.0,
) -> None:
    """List the federation's members and whether each is connected."""
    with _client(config) as client:
        if wait_for:
            names = [n.strip() for n in wait_for.split(",") if n.strip()]
            with err.status(f"waiting for {', '.join(names)}"):
                client.wait_for_nodes(names, timeout)
        members = client.nodes()
    for member in members:
        state = "connected" if member.online else "not connected"
        datasets = ", ".join(member.datasets) or "-"
        out.print(
            f"{member.name:<16} {member.role:<8} {state:<14} datasets: {datasets}",
            markup=False,
            highlight=False,
        )


def _show_plan(plan) -> None:
    inputs = ", ".join(plan.data_parties)
    err.print(
        f"signing the job with parties {', '.join(plan.parties)} (inputs: {inputs})",
        markup=False,
        highlight=False,
    )


@app.command()
def result(
    job_id: Annotated[str, typer.Argument(help="Job id, or `verify` to check a saved file.")],
    saved: Annotated[
        Path | None, typer.Argument(help="With `verify`: a result saved as .json.")
    ] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help=".csv, .json or .parquet")] = None,
    config: ClientConfigOption = Path("client.toml"),
    roster: Annotated[
        Path | None, typer.Option(help="Roster for `verify` (default: the client config's).")
    ] = None,
    plot: PlotOption = None,
) -> None:
    """Fetch a released table and verify every party's signature on it.

    `jointstats result verify FILE.json` checks a saved result offline.
    """
    from jointstats.results import check_output_path

    if job_id == "verify":
        _verify_saved(saved, roster, config)
        return
    if out_file is not None:
        check_output_path(out_file)
    _check_plot(plot)
    with _client(config) as client:
        released = client.result(job_id)
    _show_result(released)
    if out_file is not None:
        released.write(out_file)
    _plot(released, plot)


def _check_plot(plot: Path | None) -> None:
    if plot is not None:
        from jointstats.plot import check_plot_path

        check_plot_path(plot)


def _plot(released, plot: Path | None) -> None:
    if plot is not None:
        released.plot(plot)
        err.print(f"picture: {plot}", markup=False, highlight=False)


def _verify_saved(saved: Path | None, roster: Path | None, config: Path) -> None:
    from jointstats.config import ClientConfig
    from jointstats.keys import Roster
    from jointstats.results import Result

    if saved is None:
        raise typer.BadParameter("give the saved result: jointstats result verify FILE.json")
    roster_path = roster if roster is not None else ClientConfig.load(config).roster
    released = Result.verify_file(saved, Roster.load(roster_path))
    parties = ", ".join(released.signed["session"]["parties"]) if released.signed else ""
    out.print(f"{saved}: verified, signed by {parties}", markup=False, highlight=False)


def _follow(client, job_id: str):
    from jointstats.progress import follow_job

    return follow_job(client, job_id, err)


def _show_result(released) -> None:
    from jointstats.progress import print_result

    print_result(out, released)


@app.command()
def local(
    job: Annotated[Path, typer.Argument(help="Job file (TOML or JSON).")],
    node: Annotated[
        list[str],
        typer.Option(
            "--node",
            metavar="NAME[=PATH]",
            help="NAME=PATH: a .csv/.tsv/.parquet file or folder (dataset = file stem); "
            "NAME=node.toml: that config's \\[datasets]; NAME alone: compute-only. Repeatable.",
        ),
    ],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the table: .csv, .json or .parquet.")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep each node's state under DIR/NAME/.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the result.")] = 600.0,
    plot: PlotOption = None,
) -> None:
    """Run one job through the real stack (processes, gRPC, TLS, MPC) on loopback."""
    from jointstats.jobs import load_job_file
    from jointstats.local import LocalFederation, LocalNode, parse_node_option
    from jointstats.results import check_output_path

    if out_file is not None:
        check_output_path(out_file)
    _check_plot(plot)
    doc = load_job_file(job)
    nodes: dict[str, LocalNode] = {}
    for option in node:
        parse_node_option(option, nodes)
    disclosure = doc.get("disclosure")
    heavy = doc.get("kind") == "linked_crosstab" or (
        isinstance(disclosure, dict) and bool(disclosure.get("margins"))
    )
    federation = LocalFederation(
        list(nodes.values()), workdir, session_timeout=timeout, preload_all=heavy
    )
    try:
        with err.status("starting coordinator and nodes"):
            federation.launch()
            # pandas and the client load while the processes start, on the CPU they leave
            from jointstats.progress import follow_job, print_result

            federation.connect()
        assert federation.client is not None
        job_id = federation.client.submit(doc)
        released = follow_job(federation.client, job_id, err, timeout)
    finally:
        federation.stop()
    print_result(out, released)
    if out_file is not None:
        released.write(out_file)
    _plot(released, plot)
    _before_exit()


def _before_exit() -> None:
    """A one-shot command is done and its files are closed: move every object out of the
    garbage collector's reach, so that the interpreter's teardown does not scan pandas' and
    gRPC's objects for cycles (0.1 s of `jointstats local`). atexit handlers and the flush of
    stdout and stderr still run; only finalizers of objects in cycles are skipped."""
    out.file.flush()
    err.file.flush()
    gc.freeze()


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option(help="Keep data and node state here.")] = None,
    rows: Annotated[int, typer.Option(help="Rows per agency.")] = 20_000,
) -> None:
    """Synthetic data, a federation on loopback, released tables beside the plaintext truth."""
    from jointstats.demo import run_demo

    run_demo(out, err, workdir, rows)


import jointstats.cli_approval  # noqa: E402, F401 (registers node pending|show|approve|deny)
import jointstats.cli_owner  # noqa: E402, F401 (registers node check|grants|rehearse|console)


def main() -> None:
    try:
        app()
    except JointstatsError as exc:
        err.print("error: " + str(exc), markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug of ours: one line for the user, the traceback on request
        if os.environ.get("JOINTSTATS_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc} "
            "(set JOINTSTATS_DEBUG=1 for details)"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

"""A new user's first hour: refusals that say what to do, --version, audit show --json,
the CSV's metadata sidecar and `matched` in a linked summary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from rich.console import Console
from typer.testing import CliRunner

from jointstats.cli import app
from jointstats.errors import ConfigError
from jointstats.node.policy import decide
from jointstats.progress import print_result
from jointstats.results import Result
from tests.conftest import JOB
from tests.unit.test_audit import keys, write_log  # noqa: F401 (fixture)
from tests.unit.test_node_decision import _offer, sign_job, world  # noqa: F401 (fixture)


def test_a_refused_column_lists_the_granted_ones(world) -> None:  # noqa: F811
    config, roster, state, alice, _ = world
    decision = decide(config, roster, state, _offer(sign_job({**JOB, "weight": "w"}, alice)))
    assert not decision.accept
    assert "column(s) w of households: not granted, or not in the dataset" in decision.reason
    assert "(granted: displacement_status, region)" in decision.reason


def test_a_refused_analyst_key_names_the_fingerprint_to_send(world) -> None:  # noqa: F811
    config, roster, state, _, mallory = world
    decision = decide(config, roster, state, _offer(sign_job(JOB, mallory)))
    fingerprint = roster.get("mallory").signing_fingerprint
    assert not decision.accept
    assert f"signing fingerprint {fingerprint} to the node's operator" in decision.reason


def test_version() -> None:
    run = CliRunner().invoke(app, ["--version"])
    assert run.exit_code == 0 and run.output.startswith("jointstats ")


def test_audit_show_json_prints_full_entries(tmp_path: Path, keys) -> None:  # noqa: F811
    path = tmp_path / "audit.jsonl"
    entries = write_log(path, keys[0], count=3)
    run = CliRunner().invoke(app, ["audit", "show", str(path), "--json"])
    assert run.exit_code == 0, run.output
    printed = [json.loads(line) for line in run.output.splitlines()]
    assert printed == [json.loads(line) for line in path.read_text().splitlines()]
    assert (
        [p["fields"]["col"] for p in printed]
        == ["région"] * 3
        == [e["fields"]["col"] for e in entries]
    )


def _linked_result() -> Result:
    table = pd.DataFrame({"district": ["d1"], "count": [12], "suppressed": [False]})
    meta = {"matched": 812, "inputs": ["ministry", "survey"], "disclosure": {"min_cell": 10}}
    return Result(table, meta)


def test_csv_gets_a_metadata_sidecar(tmp_path: Path) -> None:
    _linked_result().write(tmp_path / "linked.csv")
    assert json.loads((tmp_path / "linked.meta.json").read_text())["matched"] == 812


def test_linked_summary_prints_matched() -> None:
    console = Console(record=True, width=120)
    print_result(console, _linked_result())
    assert "matched 812; inputs: ministry, survey" in console.export_text()


def test_a_min_cell_raised_by_a_floor_is_a_warning_line() -> None:
    from tests.unit.test_shares_plot import _result

    table = pd.DataFrame({"a": ["x"], "count": [12], "suppressed": [False]})
    job = {"kind": "crosstab", "by": ["a"], "disclosure": {"min_cell": 3}}
    console = Console(record=True, width=120)
    print_result(console, _result(table, job, {"disclosure": {"min_cell": 5}}))
    assert "warning: min_cell raised from 3 to 5 by a node's policy floor" in console.export_text()
    console = Console(record=True, width=120)
    print_result(console, _result(table, job, {"disclosure": {"min_cell": 3}}))
    assert "warning" not in console.export_text()


def test_local_help_describes_out_formats_and_node_configs() -> None:
    run = CliRunner().invoke(app, ["local", "--help"], env={"COLUMNS": "250"})
    assert ".csv, .json or .parquet" in run.output and "NAME=node.toml" in run.output
    assert "FILE.png" in run.output


def test_help_shows_flags_as_taking_no_value() -> None:
    for command in ([], ["local"], ["submit"], ["node", "serve"]):
        run = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
        assert run.exit_code == 0, run.output
        assert "--help" in run.output and "<bool>" not in run.output


def _commands(command: Any, path: str = "jointstats") -> Iterator[tuple[str, Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_every_command_has_a_one_line_summary_and_every_parameter_a_description() -> None:
    for path, command in _commands(typer.main.get_command(app)):
        assert command.help, f"{path} has no help"
        assert "\n" not in command.help.split("\n\n")[0].strip(), f"{path}: summary wraps"
        for param in command.params:
            assert param.name == "help" or getattr(param, "help", None), f"{path} {param.name}"


def test_fingerprints_do_not_wrap_at_80_columns(tmp_path: Path) -> None:
    run = CliRunner().invoke(
        app, ["keys", "new", "--name", "ann", "--role", "analyst", "--out", str(tmp_path)]
    )
    assert run.exit_code == 0, run.output
    signing = [line for line in run.output.splitlines() if "signing fingerprint" in line]
    assert len(signing) == 1 and len(signing[0].split()[-1]) == 64


def test_keys_new_keeps_existing_keys_unless_forced(tmp_path: Path) -> None:
    args = ["keys", "new", "--name", "unhcr", "--role", "node", "--out", str(tmp_path)]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = (tmp_path / "sign.key").read_bytes()
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, ConfigError)
    assert "already holds keys" in str(again.exception) and "--force" in str(again.exception)
    assert (tmp_path / "sign.key").read_bytes() == before
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
    assert (tmp_path / "sign.key").read_bytes() != before


def test_demo_timings_are_worded_for_people() -> None:
    from jointstats.demo import timing_words

    meta = {
        "timings_by_node": {
            "jips": {"local": 0.001, "connect": 1.19, "tag": 0.82, "match": 3.74, "mpc": 5.32},
            "ministry": {"local": 1.02, "connect": 0.14, "tag": 0.76, "match": 3.84, "mpc": 5.33},
        }
    }
    assert timing_words(meta) == (
        "took reading the data 1.0 s, connecting 1.2 s, linking 4.6 s, the whole MPC session 5.3 s"
    )


def test_demo_data_shows_secondary_suppression_and_says_what_each_party_learned(
    tmp_path: Path,
) -> None:
    from jointstats import demo
    from jointstats.protocols import suppression
    from jointstats.protocols.release import entry_indices

    files = demo.write_demo_data(tmp_path, 20000)
    truth = demo._truth(files)
    regions, statuses = demo.REGIONS, demo.STATUSES
    counts = [truth.get((r, s), (0, 0.0))[0] for r in regions for s in statuses]
    k = demo.POOLED_JOB["disclosure"]["min_cell"]
    entries = [sum(counts[i] for i in cells) for cells in entry_indices((4, 3), margins=True)]
    primary = [c < k for c in entries]
    pattern = suppression.complete_pattern(suppression.layout((4, 3), True, False), primary, k, k)
    assert 0 < sum(primary) < sum(pattern)  # the demo's table needs cells that protect others
    table = pd.DataFrame({"suppressed": pattern})
    secondary = sum(pattern) - sum(primary)
    line = demo.pooled_learned(
        table, {"secondary_suppressed": secondary, "disclosure": {"min_cell": k}}, 20000
    )
    assert f"which {sum(primary)} of its 20 cells and totals were below {k}" in line
    linked = demo.linked_learned({"matched": 10000}, 20000, 15000)
    assert "the survey has 15000 records and 10000 were linked" in linked

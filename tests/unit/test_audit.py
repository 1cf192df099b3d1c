"""The audit log: a signed hash chain whose every change, removal or reordering `verify` names."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointstats.audit import GENESIS, AuditLog, canonical, verify
from jointstats.errors import AuditError, ConfigError
from jointstats.keys import Identity, Roster, new_member

JOINTSTATS = Path(sys.executable).with_name("jointstats")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Identity, Path]:
    root: Path = tmp_path_factory.mktemp("keys")
    roster = Roster()
    for name in ("unhcr", "mallory"):
        roster.members[name] = new_member(root / name, name, "node")
    roster.save(root / "roster.toml")
    return Identity.load(root / "unhcr"), Identity.load(root / "mallory"), root / "roster.toml"


def write_log(path: Path, identity: Identity, count: int = 5) -> list[dict]:
    log = AuditLog(path, identity, "unhcr")
    return [
        log.append("JOB_RECEIVED", job_id=f"job-{i}", principal="analyst-fp", rows=i, col="région")
        for i in range(count)
    ]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_append_writes_a_verifiable_signed_chain(tmp_path: Path, keys) -> None:
    identity, _, _ = keys
    path = tmp_path / "node" / "audit.jsonl"
    entries = write_log(path, identity)
    report = verify(path, identity.sign_private.public_key().public_bytes_raw())
    assert report.ok and report.entries == 5 and report.first_bad_line is None
    first = json.loads(lines(path)[0])
    assert first == entries[0]
    assert first["seq"] == 1 and first["prev"] == GENESIS and first["event"] == "JOB_RECEIVED"
    assert first["time"].endswith("Z") and first["fields"] == {"rows": 0, "col": "région"}
    assert all(line == canonical(json.loads(line)) + b"\n" for line in lines(path))


def test_reopened_log_continues_seq_and_chain(tmp_path: Path, keys) -> None:
    identity, _, _ = keys
    path = tmp_path / "audit.jsonl"
    write_log(path, identity, 3)
    log = AuditLog(path, identity, "unhcr")
    entry = log.append("RESULT_RELEASED", job_id="job-9", digest="ab" * 32)
    assert entry["seq"] == 4
    assert verify(path).ok and verify(path).entries == 4
    assert verify(path).head == log.head


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(b"".join(edit(lines(path))))


def _change_value(rows: list[bytes]) -> list[bytes]:
    rows[2] = rows[2].replace(b'"rows":2', b'"rows":3')
    return rows


@pytest.mark.parametrize(
    ("edit", "bad_line", "words"),
    [
        (_change_value, 3, "signature"),
        (lambda rows: rows[:2] + rows[3:], 3, "seq"),
        (lambda rows: [rows[0], rows[2], rows[1], *rows[3:]], 2, "seq"),
        (lambda rows: rows[:4] + [rows[4][:40]], 5, "incomplete"),
        (lambda rows: rows[:4] + [rows[4][:40] + b"\n"], 5, "JSON"),
        (lambda rows: [*rows[:3], b"\n", *rows[3:]], 4, "JSON"),
        (lambda rows: [*rows[:4], json.dumps(json.loads(rows[4])).encode() + b"\n"], 5, "canon"),
    ],
    ids=["change", "delete", "reorder", "truncate", "garble", "blank", "reformat-last"],
)
def test_tampering_names_the_first_bad_line(
    tmp_path: Path, keys, edit, bad_line: int, words: str
) -> None:
    identity, _, _ = keys
    path = tmp_path / "audit.jsonl"
    write_log(path, identity)
    _rewrite(path, edit)
    report = verify(path)
    assert not report.ok
    assert report.first_bad_line == bad_line and report.entries == bad_line - 1
    assert words in report.reason
    with pytest.raises(ConfigError, match="audit verify"):
        AuditLog(path, identity, "unhcr")


def test_recomputed_hash_does_not_hide_a_change(tmp_path: Path, keys) -> None:
    """An editor who fixes up `prev` of the next line still cannot re-sign the changed entry."""
    identity, _, _ = keys
    path = tmp_path / "audit.jsonl"
    write_log(path, identity)
    rows = _change_value(lines(path))
    nxt = json.loads(rows[3])
    nxt["prev"] = hashlib.sha256(rows[2][:-1]).hexdigest()
    rows[3] = canonical(nxt) + b"\n"
    path.write_bytes(b"".join(rows))
    assert verify(path).first_bad_line == 3


def forged(identity: Identity, seq: int, prev: str) -> bytes:
    """A well-formed entry, correctly chained, signed by `identity` (written independently)."""
    public = identity.sign_private.public_key().public_bytes_raw()
    entry = {
        "seq": seq,
        "time": "2026-01-01T00:00:00.000000Z",
        "node": "unhcr",
        "event": "JOB_ACCEPTED",
        "job_id": "job-x",
        "principal": "",
        "fields": {},
        "prev": prev,
        "key": public.hex(),
    }
    entry["sig"] = base64.b64encode(identity.sign_private.sign(canonical(entry))).decode()
    return canonical(entry) + b"\n"


def test_entry_signed_by_a_foreign_key_is_named(tmp_path: Path, keys) -> None:
    identity, mallory, _ = keys
    path = tmp_path / "audit.jsonl"
    write_log(path, identity, 3)
    with path.open("ab") as file:
        file.write(forged(identity, 4, verify(path).head))
    assert verify(path).ok  # the forger's entry is well formed when signed by the right key
    with path.open("ab") as file:
        file.write(forged(mallory, 5, verify(path).head))
    report = verify(path)
    assert (report.ok, report.first_bad_line) == (False, 5)
    assert "different key" in report.reason
    # The whole log rewritten by another key verifies alone, but not against the pinned key.
    other = tmp_path / "other.jsonl"
    write_log(other, mallory, 2)
    assert verify(other).ok
    pinned = verify(other, identity.sign_private.public_key().public_bytes_raw())
    assert (pinned.ok, pinned.first_bad_line) == (False, 1)


def test_append_rejects_bad_event_names_and_non_json_fields(tmp_path: Path, keys) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", keys[0], "unhcr")
    for name in ("job_received", "JOB-RECEIVED", "", "_JOB"):
        with pytest.raises(AuditError):
            log.append(name)
    with pytest.raises(AuditError):
        log.append("JOB_RECEIVED", blob=b"raw bytes")
    with pytest.raises(AuditError):
        log.append("JOB_RECEIVED", ratio=float("nan"))
    assert not (tmp_path / "audit.jsonl").exists()


def test_verify_reports_a_missing_file_without_raising(tmp_path: Path) -> None:
    report = verify(tmp_path / "nope.jsonl")
    assert not report.ok and report.first_bad_line is None and "cannot read" in report.reason


@pytest.fixture(scope="module")
def sample_log(keys, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("sample") / "audit.jsonl"
    write_log(path, keys[0], 4)
    return path.read_bytes()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_is_detected_on_its_line(sample_log: bytes, data) -> None:
    index = data.draw(st.integers(0, len(sample_log) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != sample_log[index]))
    changed = sample_log[:index] + bytes([byte]) + sample_log[index + 1 :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.jsonl"
        path.write_bytes(changed)
        report = verify(path)
    assert not report.ok
    assert report.first_bad_line == sample_log[:index].count(b"\n") + 1


def test_signature_with_non_canonical_base64_padding_bits_is_refused(tmp_path: Path, keys) -> None:
    path = tmp_path / "audit.jsonl"
    (entry,) = write_log(path, keys[0], 1)
    sig = entry["sig"]  # 64 bytes: 86 characters and "==", the last one carries 4 unused bits
    last = B64.index(sig[-3])
    entry["sig"] = sig[:-3] + B64[last ^ 1] + "=="
    assert base64.b64decode(entry["sig"]) == base64.b64decode(sig)
    path.write_bytes(canonical(entry) + b"\n")
    assert verify(path).first_bad_line == 1


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JOINTSTATS), "audit", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def test_cli_verify_and_show(tmp_path: Path, keys) -> None:
    identity, _, roster = keys
    path = tmp_path / "audit.jsonl"
    write_log(path, identity)
    done = run_cli("verify", path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"{path}: 5 entries, chain intact"
    assert run_cli("verify", path, "--key-from", roster, "--member", "unhcr").returncode == 0
    foreign = run_cli("verify", path, "--key-from", roster, "--member", "mallory")
    assert foreign.returncode == 10 and "line 1" in foreign.stderr
    shown = run_cli("show", path)
    assert shown.returncode == 0 and "JOB_RECEIVED" in shown.stdout and "job-4" in shown.stdout

    _rewrite(path, lambda rows: rows[:2] + rows[3:])
    for command in ("verify", "show"):
        done = run_cli(command, path)
        assert done.returncode == 10, done.stderr
        assert done.stderr.strip().splitlines() == [f"error: {path}: line 3: {verify(path).reason}"]
        assert "Traceback" not in done.stderr
    assert run_cli("verify", tmp_path / "missing.jsonl").returncode == 10

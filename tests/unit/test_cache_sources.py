"""The columnar copy of CSV sources (node/csv_cache.py): same answers as the CSV and pandas,
rebuilt whenever the CSV changes (even with the same size and a restored mtime), and never
trusted when altered, truncated or deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jointstats.errors import DataError
from jointstats.node.sources import FileSource, GroupedRows
from jointstats.protocols.filters import Bands, Condition

BY = ["region", "status"]


def _frame(seed: int, rows: int = 2_000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "007"], rows),
            "status": rng.choice(["idp", "host"], rows),
            "income": rng.integers(-100, 5_000, rows),
            "w": rng.uniform(0.5, 2.0, rows).round(3),
        }
    )


def _truth(frame: pd.DataFrame) -> dict[tuple, tuple[int, float]]:
    clipped = frame.assign(income=frame["income"].clip(0, 1_000))
    grouped = clipped.groupby(BY).agg(n=("income", "size"), s=("income", "sum"))
    return {k: (int(r.n), float(r.s)) for k, r in grouped.iterrows()}


def _answer(source: FileSource) -> dict[tuple, tuple[int, float]]:
    rows = source.grouped(BY, "income", (0.0, 1_000.0))
    assert rows.sums is not None
    return dict(zip(rows.keys, zip(rows.counts, rows.sums, strict=True), strict=True))


def _by_key(rows: GroupedRows) -> dict[tuple, tuple[float, ...]]:
    assert rows.weights is not None and rows.weight_bad == 0
    return dict(zip(rows.keys, zip(rows.counts, rows.weights, strict=True), strict=True))


def _source(csv: Path, cache: Path | None) -> FileSource:
    return FileSource("households", csv, cache_dir=cache)  # a fresh object per job, as a worker


def _copies(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.parquet"))


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "households.csv"
    _frame(1).to_csv(path, index=False)
    return path


def test_the_copy_answers_as_the_csv_and_pandas(csv, tmp_path):
    cache = tmp_path / "cache"
    first = _answer(_source(csv, cache))
    assert len(_copies(cache)) == 1
    later = _answer(_source(csv, cache))
    assert first == later == _answer(_source(csv, None)) == _truth(pd.read_csv(csv))
    where = (Condition("income", low=100.0), Condition("status", values=("idp",)))
    bins = {"income": Bands("income", (0.0, 1_000.0, 10_000.0))}
    plain, cached = _source(csv, None), _source(csv, cache)
    banded = [_by_key(s.grouped(["region", "income"], None, None, "w", where, bins))
              for s in (cached, plain)]  # fmt: skip
    assert banded[0].keys() == banded[1].keys()  # GROUP BY order is not fixed
    for key, (count, weight) in banded[0].items():
        assert (count, weight) == (banded[1][key][0], pytest.approx(banded[1][key][1]))
    assert cached.read_text(["region", "income"]) == plain.read_text(["region", "income"])
    assert "007" in cached.read_text(["region"]).column("region").to_pylist()  # text as stored
    assert cached.column_types() == plain.column_types()
    assert cached.summary().columns == plain.summary().columns


def test_a_changed_csv_is_read_again_even_with_the_same_size_and_mtime(csv, tmp_path):
    cache = tmp_path / "cache"
    _answer(_source(csv, cache))
    old = csv.stat()
    changed = pd.read_csv(csv)
    changed["region"] = changed["region"].map({"north": "south", "south": "north", "007": "007"})
    text = changed.to_csv(index=False)
    assert len(text.encode()) == old.st_size  # same size, different content
    csv.write_text(text)
    os.utime(csv, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000))  # a new mtime
    assert _answer(_source(csv, cache)) == _truth(changed)
    flipped = changed.assign(status=changed["status"].map({"idp": "hst", "host": "idp"}))
    before = csv.stat()
    csv.write_text(flipped.to_csv(index=False).replace("hst", "hos"))  # same size again
    os.utime(csv, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back
    assert _answer(_source(csv, cache)) == _truth(flipped.replace("hst", "hos"))
    assert len(_copies(cache)) == 1  # older copies are removed


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "delete", "meta"])
def test_a_damaged_or_missing_copy_is_rebuilt_not_trusted(csv, tmp_path, damage):
    cache = tmp_path / "cache"
    truth = _answer(_source(csv, cache))
    (copy,) = _copies(cache)
    data = bytearray(copy.read_bytes())
    if damage == "flip":  # same size, one byte changed in the middle of the data
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))
    elif damage == "truncate":
        copy.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage":
        copy.write_bytes(b"not parquet at all")
    elif damage == "delete":
        copy.unlink()
    else:
        next(cache.glob("*.json")).write_text("{not json")
    assert _answer(_source(csv, cache)) == truth
    (rebuilt,) = _copies(cache)
    assert rebuilt.read_bytes() == bytes(data) or damage in ("flip", "truncate", "garbage")


def test_a_value_the_sniffed_type_cannot_hold_fails_as_without_the_copy(tmp_path):
    """DuckDB sniffs a sample: a bad value further down stops the CSV read with an error. The
    copy must not turn that error into a silent NULL."""
    frame = pd.DataFrame({"region": ["north"] * 30_000, "status": "idp", "income": 5})
    frame["income"] = frame["income"].astype(object)
    frame.loc[29_999, "income"] = "lots"
    csv = tmp_path / "late.csv"
    frame.to_csv(csv, index=False)
    with pytest.raises(DataError) as plain:
        _source(csv, None).grouped(BY, "income", (0.0, 10.0))
    with pytest.raises(DataError) as cached:
        _source(csv, tmp_path / "cache").grouped(BY, "income", (0.0, 10.0))
    assert str(cached.value) == str(plain.value)
    assert "lots" not in str(cached.value)
    counts = _source(csv, tmp_path / "cache").grouped(BY)  # income not needed: the copy serves
    assert counts.counts == [30_000]


def test_an_unwritable_cache_folder_reads_the_csv(csv, tmp_path):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    assert _answer(_source(csv, blocker / "cache")) == _truth(pd.read_csv(csv))


def test_a_session_worker_reads_the_csv_while_a_background_process_builds_the_copy(csv, tmp_path):
    cache = tmp_path / "cache"
    first = FileSource("households", csv, cache_dir=cache, cache_wait=False)
    assert _answer(first) == _truth(pd.read_csv(csv))  # answered from the CSV
    deadline = time.monotonic() + 60
    while not list(cache.glob("*.json")):  # the detached builder's work, not its speed
        assert time.monotonic() < deadline, (cache / "builds.log").read_text()
        time.sleep(0.05)
    later = FileSource("households", csv, cache_dir=cache, cache_wait=False)
    assert later._cached(later._files()) is not None
    assert _answer(later) == _truth(pd.read_csv(csv))

"""A columnar copy of a CSV source in the node's state folder, so that jobs after the first do
not parse the CSV again (issue 13; docs/performance.md).

A stale cache is a wrong statistic, so the copy is trusted only when all of these hold:

- its key matches: for every file, the resolved path, size, mtime_ns, ctime_ns and inode
  (ctime cannot be set back by a user, so rewriting a file with the same size and a restored
  mtime still changes the key), plus the reader options and the cache and DuckDB versions;
- the Parquet file has the size and BLAKE2b digest written beside it when it was built.

Anything else (no copy, a changed CSV, a truncated or altered file, unreadable metadata) means
rebuild; a build that fails means read the CSV directly. The copy holds every column as text
exactly as stored (`all_varchar`) and, for a column DuckDB's sniffer types (a number, a date),
that column cast to its sniffed type as well, so that a query reads text columns as text and
the others typed, as it would from the CSV, without parsing text again. Parquet columns are
named by position (c0, t0, ...), so no CSV header can collide with them. A column with a value
the sniffed type cannot hold (a CSV read would stop with an error) is marked, and a query that
needs it typed goes to the CSV, which gives that error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger(__name__)
CACHE_VERSION = 2
_TYPE = re.compile(r"^[A-Z][A-Z0-9 (),]*$")  # a DuckDB type name as DESCRIBE prints it


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def file_key(files: Iterable[Path], options: dict[str, Any]) -> dict[str, Any]:
    """What the copy must match: every file's identity and the reader options."""
    stats = []
    for file in files:
        st = file.stat()
        stats.append([str(file.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return {
        "version": CACHE_VERSION,
        "duckdb": duckdb.__version__,
        "files": stats,
        "options": options,
    }


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


@dataclass(frozen=True)
class CachedCsv:
    """A verified copy: Parquet columns by position (text, typed) and each column's sniffed type."""

    parquet: Path
    types: dict[str, str]  # column -> DuckDB type of the CSV read without pins
    failing: frozenset[str]  # columns with a value their sniffed type cannot hold

    def serves(self, pinned: Iterable[str]) -> bool:
        """Whether a query that reads `pinned` as text can use the copy (see module doc)."""
        return not (self.failing - set(pinned))

    def relation(self, pinned: Iterable[str]) -> str:
        keep = set(pinned)
        columns = []
        for i, (column, kind) in enumerate(self.types.items()):
            stored = f"t{i}" if column in keep and kind != "VARCHAR" else f"c{i}"
            columns.append(f"{stored} AS {_quote(column)}")
        return f"(SELECT {', '.join(columns)} FROM read_parquet({_literal(str(self.parquet))}))"


class CsvCache:
    """The copies of one dataset's CSV files, under `folder`, named by a digest of the key."""

    def __init__(self, folder: Path, dataset: str, key: dict[str, Any]) -> None:
        self.folder = folder
        self.dataset = dataset
        self.key = key
        self.slug = re.sub(r"[^A-Za-z0-9_]", "_", dataset)[:64]
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        self.stem = f"{self.slug}-{digest}"
        self.meta = folder / f"{self.stem}.json"
        self._lock_path = folder / f"{self.stem}.lock"

    def load(self) -> CachedCsv | None:
        """The copy if it matches the key and its digest; None otherwise (never raises)."""
        try:
            meta = json.loads(self.meta.read_text())
            if meta.get("key") != self.key:
                return None
            parquet = self.folder / str(meta["parquet"])
            if parquet.parent != self.folder or not parquet.name.startswith(self.stem):
                return None
            types = {str(c): str(t) for c, t in meta["types"].items()}
            if not types or not all(_TYPE.match(t) for t in types.values()):
                return None
            if parquet.stat().st_size != meta["size"] or _digest(parquet) != meta["digest"]:
                log.warning(
                    "dataset %s: cached copy altered or truncated; rebuilding", self.dataset
                )
                return None
            return CachedCsv(parquet, types, frozenset(meta.get("failing", [])))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def get_or_build(self, csv_relation: Callable[[bool], str]) -> CachedCsv | None:
        """The verified copy, built first when missing or stale. `csv_relation(all_text)` is the
        CSV read (all columns as text, or unpinned for the sniffed types). None: use the CSV."""
        found = self.load()
        if found is not None:
            return found
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():  # one builder per copy; the others wait and then load it
                return self.load() or self._build(csv_relation)
        except (OSError, duckdb.Error) as exc:
            # text can quote data: the type only, the rest stays in DuckDB's own error path
            log.warning("dataset %s: no cached copy (%s); reading the CSV", self.dataset,
                        type(exc).__name__)  # fmt: skip
            return None

    def build_in_background(self, spec: dict[str, Any]) -> None:
        """Start `python -m jointstats.node.csv_cache SPEC` (detached) to build the copy,
        unless a build holds the lock already. A fresh interpreter, since the caller (a
        session worker) runs gRPC threads and must not fork."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while one builds
                fcntl.flock(lock, fcntl.LOCK_UN)
            with open(self.folder / "builds.log", "ab") as log_file:
                subprocess.Popen(
                    [sys.executable, "-m", "jointstats.node.csv_cache", json.dumps(spec)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
        except OSError as exc:
            log.info("dataset %s: no background copy (%s)", self.dataset, type(exc).__name__)

    @contextlib.contextmanager
    def _locked(self):
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _build(self, csv_relation: Callable[[bool], str]) -> CachedCsv:
        part = self.folder / f"{self.stem}.part-{os.getpid()}.parquet"
        with duckdb.connect() as con:
            described = con.execute(f"DESCRIBE SELECT * FROM {csv_relation(False)}").fetchall()
            types = {str(row[0]): str(row[1]) for row in described}
            if not all(_TYPE.match(t) for t in types.values()):
                raise duckdb.InvalidInputError("a column type the copy cannot name")
            part.unlink(missing_ok=True)
            stored = []
            for i, (column, kind) in enumerate(types.items()):
                q = _quote(column)
                if kind == "VARCHAR":
                    stored.append(f"{q} AS c{i}")
                else:
                    stored.append(f"TRY_CAST({q} AS {kind}) AS c{i}, {q} AS t{i}")
            con.execute(
                f"COPY (SELECT {', '.join(stored)} FROM {csv_relation(True)}) "
                f"TO {_literal(str(part))} (FORMAT parquet)"
            )
            failing = self._failing(con, part, types)
        digest = _digest(part)
        parquet = self.folder / f"{self.stem}.{digest[:16]}.parquet"
        os.replace(part, parquet)
        meta = {
            "key": self.key,
            "parquet": parquet.name,
            "size": parquet.stat().st_size,
            "digest": digest,
            "types": types,
            "failing": sorted(failing),
        }
        tmp = self.meta.with_suffix(f".part-{os.getpid()}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.meta)
        self._remove_older(parquet)
        log.info("dataset %s: cached a columnar copy of its CSV", self.dataset)
        return CachedCsv(parquet, types, frozenset(failing))

    @staticmethod
    def _failing(con: duckdb.DuckDBPyConnection, part: Path, types: dict[str, str]) -> set[str]:
        typed = [(i, c) for i, (c, t) in enumerate(types.items()) if t != "VARCHAR"]
        if not typed:
            return set()
        counts = ", ".join(
            f"count(*) FILTER (WHERE t{i} IS NOT NULL AND c{i} IS NULL)" for i, _ in typed
        )
        row = con.execute(f"SELECT {counts} FROM read_parquet({_literal(str(part))})").fetchone()
        assert row is not None
        return {c for (_, c), bad in zip(typed, row, strict=True) if bad}

    def _remove_older(self, keep: Path) -> None:
        """Remove this dataset's other copies (earlier versions of its files, or an earlier
        build of this one): a reader that opened one keeps reading it; one that did not yet
        finds it missing and rebuilds."""
        mine = re.compile(rf"^{re.escape(self.slug)}-[0-9a-f]{{32}}\.")
        for old in self.folder.iterdir():
            if mine.match(old.name) and old not in (keep, self.meta, self._lock_path):
                old.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    """Build the copy of one FileSource given as JSON (see `build_in_background`)."""
    from jointstats.node.sources import FileSource

    logging.basicConfig(level=logging.INFO, format="%(asctime)s csv-cache %(message)s")
    # a background chore: sessions (and their jobs' latency) come first on a busy node
    with contextlib.suppress(OSError):
        os.nice(10)
    spec = json.loads(argv[0])
    spec["path"], spec["cache_dir"] = Path(spec["path"]), Path(spec["cache_dir"])
    source = FileSource(**spec)  # cache_wait: build now
    try:
        source.columns()  # reads through the copy, building it first
    except Exception as exc:  # a broken CSV: the next job reports it (value-free)
        log.info("dataset %s: copy not built (%s)", spec["dataset"], type(exc).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

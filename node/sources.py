"""Datasets a node serves, aggregated where they live (DuckDB over files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from jointstats.errors import ConfigError, DataError

FILE_SUFFIXES = {".csv": "read_csv", ".tsv": "read_csv", ".parquet": "read_parquet"}


@dataclass(frozen=True)
class GroupedRows:
    """One row per distinct combination of the grouping columns (values cast to text)."""

    keys: list[tuple[str | None, ...]]
    counts: list[int]
    sums: list[float] | None
    value_nulls: int
    value_non_numeric: int


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class FileSource:
    """A CSV or Parquet file, read by DuckDB without loading rows into Python."""

    dataset: str
    path: Path

    def __post_init__(self) -> None:
        if Path(self.path).suffix.lower() not in FILE_SUFFIXES:
            raise ConfigError(
                f"dataset {self.dataset}: {Path(self.path).name} is not a .csv or .parquet file"
            )

    def _relation(self) -> str:
        reader = FILE_SUFFIXES[Path(self.path).suffix.lower()]
        if reader == "read_csv":
            return f"read_csv({_literal(str(self.path))}, header = true)"
        return f"read_parquet({_literal(str(self.path))})"

    def _run(self, sql: str) -> list[tuple]:
        if not Path(self.path).exists():
            raise DataError(f"dataset {self.dataset}: file {self.path} does not exist")
        try:
            with duckdb.connect() as con:
                return con.execute(sql).fetchall()
        except duckdb.Error as exc:
            kind = type(exc).__name__
            raise DataError(
                f"dataset {self.dataset}: cannot read {Path(self.path).name} ({kind}); "
                "check that it is a well-formed CSV/Parquet file in UTF-8"
            ) from None

    def columns(self) -> list[str]:
        return [row[0] for row in self._run(f"DESCRIBE SELECT * FROM {self._relation()}")]

    def require_columns(self, needed: list[str]) -> None:
        present = set(self.columns())
        missing = [c for c in needed if c not in present]
        if missing:
            raise DataError(
                f"dataset {self.dataset} has no column {', '.join(map(repr, missing))}; "
                f"it has: {', '.join(sorted(present))}"
            )

    def read_columns(self, columns: list[str]) -> dict[str, np.ndarray]:
        """Selected columns as numpy arrays (text cast to VARCHAR), for protocols that need
        records rather than aggregates (record linkage)."""
        self.require_columns(columns)
        select = ", ".join(f"{_quote(c)}" for c in columns)
        if not Path(self.path).exists():
            raise DataError(f"dataset {self.dataset}: file {self.path} does not exist")
        try:
            with duckdb.connect() as con:
                return con.execute(f"SELECT {select} FROM {self._relation()}").fetchnumpy()
        except duckdb.Error as exc:
            raise DataError(
                f"dataset {self.dataset}: cannot read {Path(self.path).name} "
                f"({type(exc).__name__}); check that it is well-formed CSV/Parquet in UTF-8"
            ) from None

    def read_text(self, columns: list[str]) -> pa.Table:
        """Record-level columns as text exactly as stored (NULL when empty), for protocols that
        link records. CSV fields are not type-inferred, so an id "007" stays "007"."""
        self.require_columns(columns)
        if FILE_SUFFIXES[Path(self.path).suffix.lower()] == "read_csv":
            types = ", ".join(f"{_literal(c)}: 'VARCHAR'" for c in columns)
            relation = f"read_csv({_literal(str(self.path))}, header = true, types = {{{types}}})"
            select = ", ".join(_quote(c) for c in columns)
        else:
            relation = self._relation()
            select = ", ".join(f"CAST({_quote(c)} AS VARCHAR) AS {_quote(c)}" for c in columns)
        try:
            with duckdb.connect() as con:
                return con.sql(f"SELECT {select} FROM {relation}").to_arrow_table()
        except duckdb.Error as exc:
            raise DataError(
                f"dataset {self.dataset}: cannot read {Path(self.path).name} "
                f"({type(exc).__name__}); check that it is well-formed CSV/Parquet in UTF-8"
            ) from None

    def grouped(
        self, by: list[str], value: str | None = None, bounds: tuple[float, float] | None = None
    ) -> GroupedRows:
        """One GROUP BY over the file: counts (and clipped sums of `value`) per `by` combination."""
        self.require_columns(by + ([value] if value else []))
        keys = ", ".join(f"CAST({_quote(c)} AS VARCHAR)" for c in by)
        aggregates = ["count(*)"]
        if value:
            number = f"TRY_CAST({_quote(value)} AS DOUBLE)"
            clipped = number
            if bounds:
                clipped = f"least(greatest({number}, {float(bounds[0])!r}), {float(bounds[1])!r})"
            aggregates += [
                f"coalesce(sum({clipped}), 0)",
                f"count(*) - count({_quote(value)})",
                f"count({_quote(value)}) - count({number})",
            ]
        sql = f"SELECT {keys}, {', '.join(aggregates)} FROM {self._relation()} GROUP BY ALL"
        rows = self._run(sql)
        width = len(by)
        return GroupedRows(
            keys=[tuple(r[:width]) for r in rows],
            counts=[int(r[width]) for r in rows],
            sums=[float(r[width + 1]) for r in rows] if value else None,
            value_nulls=sum(int(r[width + 2]) for r in rows) if value else 0,
            value_non_numeric=sum(int(r[width + 3]) for r in rows) if value else 0,
        )


def source_for(dataset: str, spec: dict | str | Path) -> FileSource:
    """Build a source from a node config entry (a path, or a table with `path`)."""
    if isinstance(spec, dict):
        if "path" not in spec:
            raise ConfigError(f"dataset {dataset}: give a `path` to a .csv or .parquet file")
        spec = spec["path"]
    return FileSource(dataset, Path(spec))

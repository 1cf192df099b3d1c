"""Datasets a node serves, aggregated where they live (DESIGN §5.1; docs/sources.md).

A node config names each dataset in a `[datasets.NAME]` table. Files (CSV, Parquet, or a
folder of them as one dataset) are read by DuckDB; PostgreSQL tables, views and read-only
queries (node/sql_source.py) are aggregated by the database. Either way a job's aggregation is
one GROUP BY in the engine, never rows in Python (except `read_text`, for record linkage).

Every source answers the `Source` protocol. Engine errors can quote data, so their text goes to
the node's local log only; users get one value-free line naming the dataset and column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from jointstats.errors import ConfigError, DataError
from jointstats.node.csv_cache import CachedCsv, CsvCache, file_key
from jointstats.protocols.filters import Bands, Condition

log = logging.getLogger(__name__)

FILE_SUFFIXES = {".csv": "read_csv", ".tsv": "read_csv", ".parquet": "read_parquet"}
FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "utf-16": "utf-16", "utf16": "utf-16",
             "latin-1": "latin-1", "latin1": "latin-1", "iso-8859-1": "latin-1"}  # fmt: skip
KINDS = ("text", "number", "date", "boolean")
OUTSIDE = "<outside every band>"  # a binned value in no band: outside the domain (or "other")
FILE_KEYS = {"path", "format", "delimiter", "encoding", "header", "glob", "columns"}


@dataclass(frozen=True)
class GroupedRows:
    """One row per distinct combination of the grouping columns (values cast to text)."""

    keys: list[tuple[str | None, ...]]
    counts: list[int]
    sums: list[float] | None
    value_nulls: int
    value_non_numeric: int
    weights: list[float] | None = None
    weight_bad: int = 0  # empty, not a number, negative or not finite


@dataclass(frozen=True)
class ColumnSummary:
    name: str
    kind: str  # one of KINDS, or "other"
    engine_type: str
    nulls: int


@dataclass(frozen=True)
class DatasetSummary:
    """What `jointstats node check` prints: shape and types, never a value."""

    dataset: str
    description: str
    rows: int
    columns: list[ColumnSummary]


class Source(Protocol):
    """A dataset as protocols see it."""

    dataset: str

    def columns(self) -> list[str]: ...

    def column_types(self) -> dict[str, str]:
        """Column name -> kind (text, number, date, boolean or other), in table order."""
        ...

    def require_columns(self, needed: list[str]) -> dict[str, str]: ...

    def grouped(
        self,
        by: list[str],
        value: str | None = None,
        bounds: tuple[float, float] | None = None,
        weight: str | None = None,
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> GroupedRows: ...

    def read_text(
        self,
        columns: list[str],
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> pa.Table: ...

    def summary(self) -> DatasetSummary: ...


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parse_declared(dataset: str, spec: Any) -> dict[str, str]:
    """`columns = {region = "text", income = "number"}` from a dataset's config table."""
    if spec is None:
        return {}
    if not isinstance(spec, dict) or not all(isinstance(k, str) for k in spec):
        raise ConfigError(f"dataset {dataset}: `columns` maps column names to types")
    wrong = [c for c, kind in spec.items() if kind not in KINDS]
    if wrong:
        raise ConfigError(
            f"dataset {dataset}, column {wrong[0]}: type must be one of {', '.join(KINDS)}"
        )
    return dict(spec)


def check_columns(
    dataset: str, actual: dict[str, str], declared: dict[str, str], needed: list[str]
) -> None:
    """Needed and declared columns exist with compatible types (text accepts any type)."""
    for column in [*needed, *declared]:
        if column not in actual:
            known = f"; declared columns: {', '.join(declared)}" if declared else ""
            raise DataError(f"dataset {dataset} has no column {column!r}{known}")
        kind = declared.get(column, "text")
        if kind != "text" and actual[column] != kind:
            raise DataError(
                f"dataset {dataset}, column {column}: declared {kind} but the data holds "
                f"{actual[column]} (some values are not {kind}s?)"
            )


def aggregate_sql(
    q: Callable[[str], str],
    number: Callable[[str], str],
    double: str,
    param: Callable[[str], str],
    value: str | None,
    bounds: tuple[float, float] | None,
    weight: str | None,
) -> list[str]:
    """Aggregate expressions shared by the engines; `q` quotes a validated column name,
    `number` casts to a float, `param` names a bound parameter (job values never enter SQL)."""
    out = ["count(*)"]
    if value:
        x = number(q(value))
        clipped = f"least(greatest({x}, {param('lo')}), {param('hi')})" if bounds else x
        out += [
            f"coalesce(sum({clipped}), 0)",
            f"count(*) - count({q(value)})",
            f"count({q(value)}) - count({x})",
        ]
    if weight:
        w = number(q(weight))
        finite = f"{w} >= 0 AND {w} < CAST('Infinity' AS {double})"  # NaN sorts above Infinity
        out += [
            f"coalesce(sum({w}), 0)",
            f"count(*) - count({w}) + count(CASE WHEN NOT ({finite}) THEN 1 END)",
        ]
    return out


def check_numeric(dataset: str, actual: dict[str, str], columns: list[str]) -> None:
    """Range filters and bands compare numbers: their columns must hold numbers."""
    for column in columns:
        if actual[column] != "number":
            raise DataError(
                f"dataset {dataset}, column {column}: holds {actual[column]}, but a range in "
                "[where] or a band in [bins] needs a number column"
            )


def numeric_columns(where: tuple[Condition, ...], bins: dict[str, Bands]) -> list[str]:
    return list(dict.fromkeys([*bins, *(c.column for c in where if c.values is None)]))


def text_columns(
    columns: list[str], where: tuple[Condition, ...], bins: dict[str, Bands]
) -> list[str]:
    """Columns an engine reads as text exactly as stored: grouping keys and `[where]` lists,
    except binned columns (bands compare numbers)."""
    listed = [c.column for c in where if c.values is not None]
    return [c for c in dict.fromkeys([*columns, *listed]) if c not in bins]


def filter_sql(
    q: Callable[[str], str],
    number: Callable[[str], str],
    text: str,
    param: Callable[[str], str],
    columns: list[str],
    where: tuple[Condition, ...],
    bins: dict[str, Bands],
) -> tuple[list[str], str, dict[str, Any]]:
    """Key expressions of `columns` (a binned one becomes its band's label, OUTSIDE when in no
    band, NULL when empty), the WHERE clause and its parameters. Job values (list entries,
    range ends, band edges and labels) travel only as bound parameters named by `param`."""
    params: dict[str, Any] = {}

    def bind(name: str, value: Any) -> str:
        params[name] = value
        return param(name)

    keys = []
    for i, column in enumerate(columns):
        if column not in bins:
            keys.append(f"CAST({q(column)} AS {text})")
            continue
        band, x = bins[column], number(q(column))
        edges = [bind(f"b{i}_{j}", e) for j, e in enumerate(band.edges)]
        whens = " ".join(
            f"WHEN {x} >= {lo} AND {x} < {hi} THEN CAST({bind(f'b{i}_l{j}', label)} AS {text})"
            for j, (label, lo, hi) in enumerate(zip(band.labels, edges, edges[1:], strict=False))
        )
        outside = f"CAST({bind(f'b{i}_out', OUTSIDE)} AS {text})"
        keys.append(f"CASE WHEN {q(column)} IS NULL THEN NULL {whens} ELSE {outside} END")
    clauses = []
    for i, condition in enumerate(where):
        column = q(condition.column)
        if condition.values is not None:
            listed = ", ".join(bind(f"w{i}_{j}", v) for j, v in enumerate(condition.values))
            clauses.append(f"CAST({column} AS {text}) IN ({listed})")
            continue
        if condition.low is not None:
            clauses.append(f"{number(column)} >= {bind(f'w{i}_lo', condition.low)}")
        if condition.high is not None:
            clauses.append(f"{number(column)} <= {bind(f'w{i}_hi', condition.high)}")
    return keys, (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def grouped_rows(
    rows: list[tuple], width: int, value: str | None, weight: str | None
) -> GroupedRows:
    """GroupedRows from result rows laid out as keys, then the `aggregate_sql` columns."""
    w = width + 1 + (3 if value else 0)
    return GroupedRows(
        keys=[tuple(r[:width]) for r in rows],
        counts=[int(r[width]) for r in rows],
        sums=[float(r[width + 1]) for r in rows] if value else None,
        value_nulls=sum(int(r[width + 2]) for r in rows) if value else 0,
        value_non_numeric=sum(int(r[width + 3]) for r in rows) if value else 0,
        weights=[float(r[w]) for r in rows] if weight else None,
        weight_bad=sum(int(r[w + 1]) for r in rows) if weight else 0,
    )


def require_rows(dataset: str, grouped: GroupedRows, filtered: bool = False) -> GroupedRows:
    """An empty dataset is an error; a `[where]` that keeps no row is not (the node adds zeros)."""
    if not grouped.counts and not filtered:
        raise DataError(f"dataset {dataset} has no rows (an empty file or query?)")
    return grouped


def duckdb_kind(engine_type: str) -> str:
    name = engine_type.upper()
    if name == "VARCHAR":
        return "text"
    if name.startswith(("DECIMAL", "DOUBLE", "FLOAT", "REAL")) or name.rstrip("0123456789") in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "UHUGEINT",
    }:  # fmt: skip
        return "number"
    if name.startswith(("DATE", "TIMESTAMP", "TIME")):
        return "date"
    return "boolean" if name == "BOOLEAN" else "other"


class SchemaChecks:
    """`columns` and `require_columns` from a source's own `column_types` and `declared`."""

    dataset: str
    declared: dict[str, str]

    def column_types(self) -> dict[str, str]:
        raise NotImplementedError

    def columns(self) -> list[str]:
        return list(self.column_types())

    def require_columns(self, needed: list[str]) -> dict[str, str]:
        actual = self.column_types()
        check_columns(self.dataset, actual, self.declared, needed)
        return actual


@dataclass(frozen=True)
class FileSource(SchemaChecks):
    """CSV or Parquet files (one, or a folder of them), read by DuckDB without loading rows
    into Python."""

    dataset: str
    path: Path
    format: str = ""  # "csv" or "parquet"; default from the suffix (a folder: csv)
    delimiter: str | None = None
    encoding: str = "utf-8"
    header: bool = True
    glob: str | None = None  # a folder: the files matching this pattern
    declared: dict[str, str] = field(default_factory=dict)
    # a folder in the node's state for a columnar copy of CSV files (node/csv_cache.py)
    cache_dir: Path | None = field(default=None, compare=False)
    # build a missing copy before answering (True), or read the CSV this time and let a
    # background process build it (False: session workers, so a first job is not slower)
    cache_wait: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        suffix = Path(self.glob or self.path).suffix.lower()
        fmt = self.format or FORMATS.get(suffix) or ("" if suffix else self._folder_format())
        if fmt not in ("csv", "parquet"):
            raise ConfigError(
                f"dataset {self.dataset}: {Path(self.path).name} is not a .csv or .parquet file "
                '(or set format = "csv" / "parquet")'
            )
        if self.encoding.lower() not in ENCODINGS:
            raise ConfigError(
                f"dataset {self.dataset}: encoding must be utf-8, utf-16 or latin-1 "
                "(convert other encodings first)"
            )
        object.__setattr__(self, "format", fmt)
        object.__setattr__(self, "encoding", ENCODINGS[self.encoding.lower()])

    def _folder_format(self) -> str:
        """A folder without `format`: the one kind of file it holds (csv when empty)."""
        path = Path(self.path)
        found = {FORMATS[p.suffix.lower()] for p in path.glob("*.*") if p.suffix.lower() in FORMATS}
        if len(found) > 1:
            raise ConfigError(
                f"dataset {self.dataset}: folder {path.name} mixes CSV and Parquet files; "
                'set format = "csv" or "parquet"'
            )
        return found.pop() if found else "csv"

    def _files(self) -> list[Path]:
        path = Path(self.path)
        if path.is_dir():
            pattern = self.glob or ("*.parquet" if self.format == "parquet" else "*.[ct]sv")
            files = sorted(p for p in path.glob(pattern) if p.is_file())
            if not files:
                raise DataError(f"dataset {self.dataset}: folder {path} has no {pattern} files")
        elif path.is_file():
            files = [path]
        else:
            raise DataError(f"dataset {self.dataset}: file {path} does not exist")
        for file in files:
            if file.stat().st_size == 0:
                raise DataError(f"dataset {self.dataset}: file {file.name} is empty")
        return files

    def _relation(self, text: list[str] | tuple[str, ...] = (), pin: bool = True) -> str:
        """The files as a DuckDB relation; `text` columns (and, with `pin`, the columns declared
        text, which must exist) are read as text, exactly as stored."""
        files = self._files()
        if self.format == "parquet":
            listed = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
            return f"read_parquet({listed}, union_by_name = true)"
        declared = [c for c, kind in self.declared.items() if kind == "text" and pin]
        pinned = list(dict.fromkeys([*text, *declared]))
        cached = self._cached(files)
        if cached is not None and cached.serves(pinned):
            return cached.relation(pinned)
        return self._csv_relation(files, pinned)

    def _cached(self, files: list[Path]) -> CachedCsv | None:
        """The verified columnar copy of the CSV files, built when missing or stale; checked
        once per source object (one job), since hashing it costs a few milliseconds."""
        if self.cache_dir is None:
            return None
        key = file_key(files, self._reader_options())
        memo = self.__dict__.get("_cache_memo")
        if memo is not None and memo[0] == key:
            return memo[1]
        cache = CsvCache(self.cache_dir, self.dataset, key)
        if self.cache_wait:
            found = cache.get_or_build(
                lambda all_text: self._csv_relation(files, [], all_text=all_text)
            )
        else:
            found = cache.load()
            if found is None:
                cache.build_in_background(self._spec())
        object.__setattr__(self, "_cache_memo", (key, found))
        return found

    def _spec(self) -> dict[str, Any]:
        """This source as JSON, for `python -m jointstats.node.csv_cache` to rebuild it."""
        return {
            "dataset": self.dataset,
            "path": str(self.path),
            "format": self.format,
            "delimiter": self.delimiter,
            "encoding": self.encoding,
            "header": self.header,
            "glob": self.glob,
            "declared": self.declared,
            "cache_dir": str(self.cache_dir),
        }

    def _reader_options(self) -> dict[str, Any]:
        return {
            "delimiter": self.delimiter,
            "encoding": self.encoding,
            "header": self.header,
            "glob": self.glob,
            "declared": self.declared,
        }

    def _csv_relation(self, files: list[Path], pinned: list[str], all_text: bool = False) -> str:
        listed = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
        options = [
            f"header = {str(self.header).lower()}",
            f"encoding = {_literal(self.encoding)}",
            "union_by_name = true",
        ]
        if self.delimiter:
            options.append(f"delim = {_literal(self.delimiter)}")
        if not self.header and self.declared:
            options.append(f"names = [{', '.join(_literal(c) for c in self.declared)}]")
        if all_text:
            options.append("all_varchar = true")
        elif pinned:
            types = ", ".join(f"{_literal(c)}: 'VARCHAR'" for c in pinned)
            options.append(f"types = {{{types}}}")
        return f"read_csv({listed}, {', '.join(options)})"

    def _run(self, sql: str, params: dict | None = None, arrow: bool = False) -> Any:
        try:
            with duckdb.connect() as con:
                if arrow:
                    return con.sql(sql, params=params).to_arrow_table()
                return con.execute(sql, params or {}).fetchall()
        except duckdb.Error as exc:
            raise self._error(exc) from None

    def _error(self, exc: duckdb.Error) -> DataError:
        """A value-free message; DuckDB's own text can quote data, so it goes to the log."""
        log.info("dataset %s: DuckDB error: %s", self.dataset, exc)
        text, name = str(exc).lower(), Path(self.path).name
        if "unicode" in text or "encoded" in text:
            hint = f"is not valid {self.encoding} text; set `encoding` (utf-8, utf-16, latin-1)"
        elif "sniff" in text or "dialect" in text:
            hint = "is not a CSV file DuckDB can parse; check `delimiter` and `header`"
        elif "magic bytes" in text or self.format == "parquet":
            hint = "is not a valid Parquet file (corrupt or truncated?)"
        elif "number of columns" in text or "too many columns" in text:
            hint = "has rows with a different number of fields; check `delimiter` and quoting"
        else:
            hint = f"cannot be read ({type(exc).__name__}); check that it is well-formed CSV"
        return DataError(f"dataset {self.dataset}: {name} {hint}")

    def column_types(self) -> dict[str, str]:
        rows = self._run(f"DESCRIBE SELECT * FROM {self._relation(pin=False)}")
        return {row[0]: duckdb_kind(row[1]) for row in rows}

    def _filtered(
        self, columns: list[str], where: tuple[Condition, ...], bins: dict[str, Bands]
    ) -> tuple[list[str], str, dict[str, Any]]:
        return filter_sql(
            _quote, lambda c: f"TRY_CAST({c} AS DOUBLE)", "VARCHAR", lambda p: f"${p}",
            columns, where, bins,
        )  # fmt: skip

    def read_text(
        self,
        columns: list[str],
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> pa.Table:
        """Record-level columns as text exactly as stored (NULL when empty), for protocols that
        link records; a binned column as its band's label; only rows that pass `where`. CSV
        fields are not type-inferred, so an id "007" stays "007"."""
        bins = bins or {}
        actual = self.require_columns([*columns, *(c.column for c in where)])
        check_numeric(self.dataset, actual, numeric_columns(where, bins))
        keys, clause, params = self._filtered(columns, where, bins)
        select = ", ".join(f"{k} AS {_quote(c)}" for k, c in zip(keys, columns, strict=True))
        relation = self._relation(text_columns(columns, where, bins))
        return self._run(f"SELECT {select} FROM {relation}{clause}", params, arrow=True)

    def grouped(
        self,
        by: list[str],
        value: str | None = None,
        bounds: tuple[float, float] | None = None,
        weight: str | None = None,
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> GroupedRows:
        """One GROUP BY over the files: counts, clipped sums of `value` and sums of `weight`
        per `by` combination (non-numbers are counted, not summed), over the rows that pass
        `where`, with binned columns grouped by band."""
        bins = bins or {}
        needed = by + [c for c in (value, weight) if c] + [c.column for c in where]
        actual = self.require_columns(needed)
        check_numeric(self.dataset, actual, numeric_columns(where, bins))
        keys, clause, params = self._filtered(by, where, bins)
        aggregates = aggregate_sql(
            _quote, lambda c: f"TRY_CAST({c} AS DOUBLE)", "DOUBLE", lambda p: f"${p}",
            value, bounds, weight,
        )  # fmt: skip
        if value and bounds:
            params |= {"lo": bounds[0], "hi": bounds[1]}
        relation = self._relation(text_columns(by, where, bins))
        select = ", ".join([*keys, *aggregates])
        sql = f"SELECT {select} FROM {relation}{clause} GROUP BY ALL"
        rows = self._run(sql, params or None)
        grouped = grouped_rows(rows, len(by), value, weight)
        return require_rows(self.dataset, grouped, filtered=bool(where))

    def summary(self) -> DatasetSummary:
        self.require_columns([])
        described = self._run(f"DESCRIBE SELECT * FROM {self._relation()}")
        counts = ", ".join(f"count(*) - count({_quote(row[0])})" for row in described)
        row = self._run(f"SELECT count(*), {counts} FROM {self._relation()}")[0]
        columns = [
            ColumnSummary(name, duckdb_kind(kind), kind, int(nulls))
            for (name, kind, *_), nulls in zip(described, row[1:], strict=True)
        ]
        files = self._files()
        what = f"{len(files)} {self.format} files in {self.path}" if len(files) > 1 else ""
        return DatasetSummary(
            self.dataset, what or f"{self.format} file {files[0]}", int(row[0]), columns
        )


def file_source(dataset: str, spec: dict[str, Any]) -> FileSource:
    unknown = set(spec) - FILE_KEYS
    if unknown:
        raise ConfigError(f"dataset {dataset}: unknown field(s) {', '.join(sorted(unknown))}")
    options = {k: spec[k] for k in ("format", "delimiter", "encoding", "glob") if k in spec}
    if not all(isinstance(v, str) and v for v in options.values()):
        raise ConfigError(f"dataset {dataset}: format, delimiter, encoding, glob must be text")
    header = spec.get("header", True)
    if not isinstance(header, bool):
        raise ConfigError(f"dataset {dataset}: `header` must be true or false")
    declared = parse_declared(dataset, spec.get("columns"))
    return FileSource(dataset, Path(spec["path"]), header=header, declared=declared, **options)


def source_for(dataset: str, spec: dict | str | Path) -> Source:
    """Build a source from a node config entry: a path, a file table (`path`), a Spark
    dataset (`engine = "spark"`) or a PostgreSQL table (`table`, `view` or `query`, with
    `url_env`, `url_file` or `url`)."""
    if not isinstance(spec, dict):
        return FileSource(dataset, Path(spec))
    if spec.get("engine") == "spark":
        from jointstats.node.spark_source import spark_source  # pyspark only when used

        return spark_source(dataset, spec)
    if "path" in spec:
        return file_source(dataset, spec)
    if any(k in spec for k in ("table", "view", "query")):
        from jointstats.node.sql_source import sql_source  # SQLAlchemy only when needed

        return sql_source(dataset, spec)
    raise ConfigError(
        f"dataset {dataset}: give a `path` (CSV/Parquet file or folder), "
        "or a `table`, `view` or `query` with a database `url_env` / `url_file`"
    )

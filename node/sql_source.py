"""PostgreSQL datasets: a table, a view or a read-only query, aggregated in the database.

The job's aggregation is pushed down as one GROUP BY (DESIGN §5.1), so a 1e7-row table never
leaves the server; only `read_text` (record linkage) fetches rows. Every statement runs in a
READ ONLY transaction with a statement timeout. Column names from a job enter SQL only after
they were found in the relation's actual column list, and then quoted; job values (bounds,
`[where]` values and ranges, `[bins]` edges and labels) travel as bound parameters. The
connection URL comes from the node's environment (`url_env`) or a file (`url_file`), never from
a job, and never appears in a message.
Database error texts can quote data: they go to the node's local log only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from jointstats.errors import ConfigError, DataError
from jointstats.node.sources import (
    ColumnSummary,
    DatasetSummary,
    GroupedRows,
    SchemaChecks,
    aggregate_sql,
    check_numeric,
    filter_sql,
    grouped_rows,
    numeric_columns,
    parse_declared,
    require_rows,
)
from jointstats.protocols.filters import Bands, Condition

log = logging.getLogger(__name__)

SQL_KEYS = {"url", "url_env", "url_file", "table", "view", "query", "columns", "statement_timeout"}
CONNECT_SECONDS = 10
FETCH_ROWS = 50_000
KIND_OF_TYPE = {
    **dict.fromkeys(["int2", "int4", "int8", "float4", "float8", "numeric", "oid"], "number"),
    **dict.fromkeys(["text", "varchar", "bpchar", "name", "char", "uuid"], "text"),
    **dict.fromkeys(["date", "timestamp", "timestamptz", "time", "timetz"], "date"),
    "bool": "boolean",
}


@dataclass(frozen=True)
class SqlSource(SchemaChecks):
    """A PostgreSQL relation: `kind` is table, view or query; `target` its name or SQL."""

    dataset: str
    url: str = field(repr=False)
    kind: str
    target: str
    declared: dict[str, str] = field(default_factory=dict)
    statement_timeout: float = 300.0

    @cached_property
    def _engine(self) -> sa.Engine:
        url = sa.make_url(self.url).set(drivername="postgresql+psycopg")
        args = {"connect_timeout": CONNECT_SECONDS, "application_name": "jointstats"}
        return sa.create_engine(url, poolclass=NullPool, connect_args=args)

    def _q(self, identifier: str) -> str:
        # SQLAlchemy's psycopg dialect also doubles "%": every statement goes with parameters
        return self._engine.dialect.identifier_preparer.quote_identifier(identifier)

    def _relation(self) -> str:
        if self.kind == "query":
            return "(" + self.target.strip().rstrip(";").replace("%", "%%") + ") AS src"
        return ".".join(self._q(part) for part in self.target.split(".")) + " AS src"

    def _connect(self) -> sa.Connection:
        try:
            return self._engine.connect()
        except Exception as exc:  # driver errors of every kind: refused, auth, DNS, timeout
            log.info("dataset %s: cannot connect: %s", self.dataset, exc)
            raise DataError(
                f"dataset {self.dataset}: cannot connect to the database "
                "(check url / that the server is up)"
            ) from None

    def _execute(self, sql: str, params: dict[str, Any] | None = None, each: Any = None) -> Any:
        """Run one statement read-only; `each(result)` consumes it inside the transaction."""
        with self._connect() as conn:
            try:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                timeout = str(int(self.statement_timeout * 1000))
                conn.exec_driver_sql(
                    "SELECT set_config('statement_timeout', %(t)s, true)", {"t": timeout}
                )
                result = conn.exec_driver_sql(sql, params or {})
                return each(result) if each else result.fetchall()
            except sa.exc.DBAPIError as exc:
                raise self._query_error(exc) from None

    def _query_error(self, exc: sa.exc.DBAPIError) -> DataError:
        log.info("dataset %s: query failed: %s", self.dataset, exc)
        orig = exc.orig
        if isinstance(orig, psycopg.OperationalError) and not getattr(orig, "sqlstate", None):
            return DataError(
                f"dataset {self.dataset}: lost the connection to the database "
                "(check that the server is up)"
            )
        code = getattr(orig, "sqlstate", None) or "unknown"
        return DataError(
            f"dataset {self.dataset}: the database refused the query (SQLSTATE {code}, "
            f"{type(orig).__name__}); check the dataset's `{self.kind}` and the role's rights"
        )

    def _described(self) -> list[tuple[str, str]]:
        def describe(result: Any) -> list[tuple[str, str]]:
            types = psycopg.postgres.types
            return [
                (c.name, getattr(types.get(c.type_code), "name", f"oid {c.type_code}"))
                for c in result.cursor.description
            ]

        return self._execute(f"SELECT * FROM {self._relation()} LIMIT 0", each=describe)

    def column_types(self) -> dict[str, str]:
        return {name: KIND_OF_TYPE.get(kind, "other") for name, kind in self._described()}

    def _numeric(self, actual: dict[str, str], column: str | None, role: str) -> None:
        if column and actual[column] != "number":
            raise DataError(
                f"dataset {self.dataset}, column {column}: holds {actual[column]}, "
                f"but a {role} must be a number column"
            )

    def _filtered(
        self, columns: list[str], where: tuple[Condition, ...], bins: dict[str, Bands]
    ) -> tuple[list[str], str, dict[str, Any]]:
        return filter_sql(
            self._q, lambda c: f"CAST({c} AS double precision)", "text", lambda p: f"%({p})s",
            columns, where, bins,
        )  # fmt: skip

    def grouped(
        self,
        by: list[str],
        value: str | None = None,
        bounds: tuple[float, float] | None = None,
        weight: str | None = None,
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> GroupedRows:
        """One GROUP BY executed in the database (see sources.FileSource.grouped)."""
        bins = bins or {}
        needed = by + [c for c in (value, weight) if c] + [c.column for c in where]
        actual = self.require_columns(needed)
        self._numeric(actual, value, "sum")
        self._numeric(actual, weight, "weight")
        check_numeric(self.dataset, actual, numeric_columns(where, bins))
        keys, clause, params = self._filtered(by, where, bins)
        aggregates = aggregate_sql(
            self._q, lambda c: f"CAST({c} AS double precision)", "double precision",
            lambda p: f"%({p})s", value, bounds, weight,
        )  # fmt: skip
        groups = ", ".join(str(i + 1) for i in range(len(by)))
        sql = (
            f"SELECT {', '.join(keys)}, {', '.join(aggregates)} FROM {self._relation()}{clause} "
            f"GROUP BY {groups}"
        )
        if value and bounds:
            params |= {"lo": bounds[0], "hi": bounds[1]}
        rows = self._execute(sql, params)
        grouped = grouped_rows(rows, len(by), value, weight)
        return require_rows(self.dataset, grouped, filtered=bool(where))

    def read_text(
        self,
        columns: list[str],
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> pa.Table:
        """Record-level columns as text (NULL stays NULL; a binned column as its band's label),
        only rows that pass `where`, fetched in batches."""
        bins = bins or {}
        actual = self.require_columns([*columns, *(c.column for c in where)])
        check_numeric(self.dataset, actual, numeric_columns(where, bins))
        keys, clause, params = self._filtered(columns, where, bins)
        select = ", ".join(f"{k} AS {self._q(c)}" for k, c in zip(keys, columns, strict=True))

        def fetch(result: Any) -> pa.Table:
            batches = []
            while chunk := result.fetchmany(FETCH_ROWS):
                arrays = [pa.array(list(col), pa.string()) for col in zip(*chunk, strict=True)]
                batches.append(pa.record_batch(arrays, names=columns))
            schema = pa.schema([(c, pa.string()) for c in columns])
            return pa.Table.from_batches(batches, schema)

        return self._execute(f"SELECT {select} FROM {self._relation()}{clause}", params, each=fetch)

    def summary(self) -> DatasetSummary:
        self.require_columns([])
        described = self._described()
        nulls = ", ".join(f"count(*) - count({self._q(name)})" for name, _ in described)
        row = self._execute(f"SELECT count(*), {nulls} FROM {self._relation()}")[0]
        columns = [
            ColumnSummary(name, KIND_OF_TYPE.get(kind, "other"), kind, int(n))
            for (name, kind), n in zip(described, row[1:], strict=True)
        ]
        where = f"PostgreSQL {self.kind}" + ("" if self.kind == "query" else f" {self.target}")
        return DatasetSummary(self.dataset, where, int(row[0]), columns)


def _url(dataset: str, spec: dict[str, Any]) -> str:
    given = [k for k in ("url", "url_env", "url_file") if k in spec]
    if len(given) != 1:
        raise ConfigError(f"dataset {dataset}: give exactly one of url_env, url_file or url")
    if "url_env" in spec:
        url = os.environ.get(str(spec["url_env"]), "")
        if not url:
            raise ConfigError(f"dataset {dataset}: environment variable {spec['url_env']} is unset")
    elif "url_file" in spec:
        try:
            url = Path(spec["url_file"]).read_text().strip()
        except OSError:
            raise ConfigError(
                f"dataset {dataset}: cannot read url_file {spec['url_file']}"
            ) from None
    else:
        url = str(spec["url"])
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"dataset {dataset}: the database url is malformed") from None
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"dataset {dataset}: only postgresql:// urls are supported")
    if "url" in spec and parsed.password:
        raise ConfigError(f"dataset {dataset}: a url with a password goes in url_env or url_file")
    return url


def sql_source(dataset: str, spec: dict[str, Any]) -> SqlSource:
    """A SqlSource from a `[datasets.NAME]` table (docs/sources.md)."""
    unknown = set(spec) - SQL_KEYS
    if unknown:
        raise ConfigError(f"dataset {dataset}: unknown field(s) {', '.join(sorted(unknown))}")
    kinds = [k for k in ("table", "view", "query") if k in spec]
    if len(kinds) != 1 or not isinstance(spec[kinds[0]], str) or not spec[kinds[0]].strip():
        raise ConfigError(f"dataset {dataset}: give exactly one of `table`, `view`, `query`")
    timeout = spec.get("statement_timeout", 300)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"dataset {dataset}: `statement_timeout` is a number of seconds")
    declared = parse_declared(dataset, spec.get("columns"))
    url = _url(dataset, spec)
    return SqlSource(dataset, url, kinds[0], spec[kinds[0]], declared, float(timeout))

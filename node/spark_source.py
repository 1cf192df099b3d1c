"""Spark datasets: a catalog table or a Parquet file/folder, aggregated by Spark.

```toml
[datasets.registry]
engine = "spark"
master = "local[*]"                 # or spark://host:7077, yarn, k8s://..., or a Spark
                                    # Connect server: sc://host:15002 (warm, no JVM per job)
path = "/data/registry/"            # Parquet file or folder; or uri = "s3a://lake/registry/"
                                    # or table = "db.registry" (Spark's catalog)
conf = { "spark.executor.memory" = "8g" }
```

The job's aggregation is pushed down as one GROUP BY (DESIGN §5.1) with the SQL that the DuckDB
and PostgreSQL sources use (node/sources.py `filter_sql`, `aggregate_sql`), so the semantics of
`[where]`, `[bins]`, sums, weights and values outside every band are the same by construction;
only the aggregated rows reach this process. A linked job's `read_text` pushes the filters and
bands down and collects the key and `by` columns only (Arrow); normalisation stays in
protocols/linked/records.py (Spark SQL has no NFKC, and `lower`/`trim` are not `casefold` and
Unicode `strip`).

Column names enter SQL only after they were found in the relation's schema, quoted with
backticks; job values travel as Spark's named parameters (`:name`), never in the SQL text.
Spark's own messages (and its JVM's log) can quote data: they go to the node's local log; users
get one value-free line naming the dataset and Spark's error class. pyspark is imported when a
Spark dataset is first used, so nodes without Spark never load it.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

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

SPARK_KEYS = {"engine", "master", "master_env", "table", "path", "uri", "columns", "conf"}
INSTALL_PYSPARK = 'engine = "spark" needs pyspark: pip install "jointstats[spark]"'
INSTALL_JAVA = (
    'engine = "spark" needs Java 17 or later: install a JRE (Debian: apt-get install '
    "openjdk-17-jre-headless) or set JAVA_HOME"
)
# Small defaults that suit a node: the result of a GROUP BY is a few cells, so few shuffle
# partitions; no web UI (a listening port) and no progress bar in the user's terminal.
DEFAULT_CONF = {
    "spark.app.name": "jointstats-node",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
}
# In local mode the driver listens on loopback only (Spark's default is every interface).
LOCAL_CONF = {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
LOG4J = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""  # the gateway's logger at the root's level: no "Setting default log level" line
# A JVM that exits at start on a busy machine (seen once in CI, cause unknown) gets one more try;
# a real misconfiguration fails twice, in a few seconds.
START_ATTEMPTS = 2
CONNECT_RETRIES = 3  # for an unavailable Spark Connect server: a few seconds of waits
NUMBER_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")

_lock = threading.Lock()
_spark: dict[str, Any] = {}  # "session": the one SparkSession of this process
_views = itertools.count()


def spark_kind(engine_type: str) -> str:
    """Kind (text, number, date, boolean, other) of a Spark type's simpleString."""
    name = engine_type.lower()
    if name == "string" or name.startswith(("varchar", "char")):
        return "text"
    if name.split("(")[0] in NUMBER_TYPES:
        return "number"
    if name in ("date", "timestamp", "timestamp_ntz", "timestamp_ltz"):
        return "date"
    return "boolean" if name == "boolean" else "other"


def _condition(exc: Exception) -> str:
    """Spark's error class (e.g. PATH_NOT_FOUND): a fixed name, never data. pyspark converts
    analysis errors; a SparkException from a job arrives as the raw Java exception."""
    try:
        if hasattr(exc, "getCondition"):
            return str(exc.getCondition() or "")
        java = getattr(exc, "java_exception", None)
        return str(java.getCondition() or "") if java is not None else ""
    except Exception:  # not a SparkThrowable, or the JVM is gone
        return ""


def _shown_uri(uri: str) -> str:
    """A URL as messages show it: without a user:password@ part or a ?query (a token)."""
    parts = urlsplit(uri)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "``") + "`"


def _number(column: str) -> str:
    return f"TRY_CAST({column} AS DOUBLE)"


def _param(name: str) -> str:
    return f":{name}"


def _is_connect(master: str) -> bool:
    return master.startswith("sc://")


def shown_master(master: str) -> str:
    """A master URL as messages show it: a Spark Connect URL without its parameters
    (`;token=...`, `;user_id=...`) and without user:password@."""
    if not _is_connect(master):
        return master
    host = urlsplit(master.split(";", 1)[0]).netloc.rpartition("@")[2]
    return f"sc://{host}"


def _connect(dataset: str, master: str, conf: dict[str, str]) -> Any:
    """A session on a Spark Connect server: the cluster's long-running driver does the work,
    so no JVM starts here (a warm Spark for every job). `conf` sets session options."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(f"dataset {dataset}: {INSTALL_PYSPARK}") from None
    try:
        with warnings.catch_warnings():  # pyspark's pandas notice and retry warnings
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            builder = SparkSession.builder.remote(master)
            for key, value in conf.items():
                builder = builder.config(key, value)
            session = builder.getOrCreate()
            session.client.set_retry_policies([_retry_policy()])
            session.sql("SELECT 1").collect()  # the server answers, or we say so now
    except Exception as exc:  # unreachable, refused, a bad token or option
        log.warning("dataset %s: Spark Connect did not answer: %r", dataset, exc)
        raise ConfigError(
            f"dataset {dataset}: the Spark Connect server {shown_master(master)} did not "
            "answer (is it running, and are the address and token right? details in the "
            "node's log)"
        ) from None
    return session


def _retry_policy() -> Any:
    """Retries for an unavailable Spark Connect server: a few, within seconds (pyspark's
    default keeps trying for at least 10 minutes, longer than an analyst waits)."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    return DefaultPolicy(max_retries=CONNECT_RETRIES, initial_backoff=250, max_backoff=2000)


def _is_local(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def _session_conf(master: str, conf: dict[str, str], log4j: Path) -> dict[str, str]:
    """Defaults, then the dataset's `conf`, then our log4j file added to the driver's options."""
    merged = {**DEFAULT_CONF, **(LOCAL_CONF if _is_local(master) else {}), **conf}
    java = merged.get("spark.driver.extraJavaOptions", "")
    merged["spark.driver.extraJavaOptions"] = f"{java} -Dlog4j2.configurationFile={log4j}".strip()
    return {**merged, "spark.master": master}


def _start(dataset: str, master: str, conf: dict[str, str]) -> Any:
    """Launch the driver JVM with its output kept out of a terminal (it can quote data)."""
    try:
        from pyspark import SparkConf, SparkContext
        from pyspark.java_gateway import launch_gateway
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(f"dataset {dataset}: {INSTALL_PYSPARK}") from None
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and Path(java_home, "bin", "java").exists()) and not shutil.which("java"):
        raise ConfigError(f"dataset {dataset}: {INSTALL_JAVA}")
    # A node's stderr is its log file; a terminal (`node check`) gets nothing from the JVM. The
    # JVM's stdout goes there too: a session worker's stdout carries its answer to the node.
    tty = sys.stderr.isatty()
    output = {"stdout": subprocess.DEVNULL if tty else sys.stderr.fileno(),
              "stderr": subprocess.DEVNULL if tty else None}  # fmt: skip
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            with tempfile.TemporaryDirectory(prefix="jointstats-spark-") as folder:
                log4j = Path(folder) / "log4j2.properties"  # read once, when the JVM starts
                log4j.write_text(LOG4J)
                settings = _session_conf(master, conf, log4j)
                spark_conf = SparkConf(loadDefaults=False).setAll(list(settings.items()))
                # a JVM left by a stopped session is reused: pyspark keeps one gateway a process
                gateway = SparkContext._gateway or launch_gateway(spark_conf, output)
                with warnings.catch_warnings():  # pyspark's pandas-version notice, not ours
                    warnings.simplefilter("ignore", FutureWarning)
                    context = SparkContext(conf=spark_conf, gateway=gateway)
            break
        except Exception as exc:  # JAVA_GATEWAY_EXITED, a bad conf value, an unreachable master
            log.warning("dataset %s: Spark did not start (attempt %d): %r", dataset, attempt, exc)
            SparkContext._gateway = SparkContext._jvm = None  # a dead JVM is not reused
            if attempt == START_ATTEMPTS:
                raise ConfigError(
                    f"dataset {dataset}: Spark did not start (master {master}); it needs Java "
                    "17 or later, and `conf` values Spark accepts (details in the node's log)"
                ) from None
    context.setLogLevel("ERROR")
    return SparkSession(context)


def spark_session(dataset: str, master: str, conf: dict[str, str]) -> Any:
    """The process's one Spark session (a JVM holds one SparkContext): started by the first
    Spark dataset used; every Spark dataset of a node must name the same master."""
    with _lock:
        session = _spark.get("session")
        if session is not None and not _alive(session):
            session = None
        if session is None:
            start = _connect if _is_connect(master) else _start
            session = _spark["session"] = start(dataset, master, conf)
            _spark["master"] = master
        elif _spark.get("master") != master:
            raise ConfigError(
                f"dataset {dataset}: master {shown_master(master)} differs from another Spark "
                "dataset's; "
                "a node uses one Spark master"
            )
        return session


def _alive(session: Any) -> bool:
    """False for a session that was stopped (a local one's context is gone)."""
    if _is_connect(_spark.get("master", "")):
        return not getattr(session, "is_stopped", False)
    return session.sparkContext._jsc is not None


def stop_spark() -> None:
    """Stop this process's Spark session and its JVM (tests, benchmarks; nodes just exit)."""
    with _lock:
        session = _spark.pop("session", None)
        master = _spark.pop("master", "")
        if session is None:
            return
        session.stop()
        if _is_connect(master):
            return  # the server's JVM is not ours
        from pyspark import SparkContext

        gateway, SparkContext._gateway, SparkContext._jvm = SparkContext._gateway, None, None
        if gateway is not None:
            gateway.shutdown()
            proc = getattr(gateway, "proc", None)
            if proc is not None and proc.stdin is not None:
                proc.stdin.close()  # the JVM exits when its stdin closes
                proc.wait(timeout=30)


@dataclass(frozen=True)
class SparkSource(SchemaChecks):
    """A Spark catalog table or a Parquet file/folder, aggregated by Spark."""

    dataset: str
    master: str
    table: str | None = None
    path: Path | None = None  # Parquet on the node's file system
    uri: str | None = None  # Parquet at a Hadoop file system URL (hdfs://, s3a://, file://)
    declared: dict[str, str] = field(default_factory=dict)
    conf: dict[str, str] = field(default_factory=dict)

    @cached_property
    def _session(self) -> Any:
        return spark_session(self.dataset, self.master, self.conf)

    @cached_property
    def _frame(self) -> Any:
        """The relation (schema read once); nothing is computed until a query runs."""
        spark = self._session
        if self.table is not None:
            return self._guard(lambda: spark.table(self.table))
        return self._guard(lambda: spark.read.parquet(str(self.path or self.uri)))

    @property
    def _where(self) -> str:
        """The dataset's location for messages."""
        if self.uri is not None:
            return f"uri {_shown_uri(self.uri)}"
        return f"path {self.path}" if self.path is not None else f"table {self.table}"

    @cached_property
    def _view(self) -> str:
        """The relation as a temporary view of the session, named for the SQL we send."""
        name = f"jointstats_source_{next(_views)}"
        self._guard(lambda: self._frame.createOrReplaceTempView(name))
        return name

    def _guard(self, run: Any) -> Any:
        """Run a Spark call; its errors become one value-free line."""
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException

        try:
            with warnings.catch_warnings():  # pyspark's pandas-version notice, not ours
                warnings.simplefilter("ignore", FutureWarning)
                return run()
        except (PySparkException, Py4JError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> DataError:
        log.info("dataset %s: Spark error: %s", self.dataset, exc)
        condition = _condition(exc)
        where = self._where
        if condition == "PATH_NOT_FOUND":
            return DataError(f"dataset {self.dataset}: {where} does not exist")
        if condition == "TABLE_OR_VIEW_NOT_FOUND":
            return DataError(
                f"dataset {self.dataset}: Spark's catalog has no {where} "
                "(check `table` and the catalog settings in `conf`)"
            )
        if self.table is None and (
            "PARQUET" in condition or condition.startswith(("FAILED_READ_FILE", "CANNOT_READ"))
        ):
            name = (
                Path(self.path).name
                if self.path
                else PurePosixPath(urlsplit(self.uri or "").path).name
            )
            return DataError(
                f"dataset {self.dataset}: {name} is not a valid Parquet file "
                "(corrupt or truncated?)"
            )
        reason = condition or type(exc).__name__
        return DataError(
            f"dataset {self.dataset}: Spark refused the query ({reason}); check the dataset's "
            "`table`, `path` or `uri` (details in the node's log)"
        )

    def _sql(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """A DataFrame of `sql` (which names the relation by `self._view`)."""
        return self._guard(lambda: self._session.sql(sql, args=params or None))

    def _collect(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        frame = self._sql(sql, params)
        return [tuple(row) for row in self._guard(frame.collect)]

    def column_types(self) -> dict[str, str]:
        fields = self._frame.schema.fields
        return {f.name: spark_kind(f.dataType.simpleString()) for f in fields}

    def _filtered(
        self, columns: list[str], where: tuple[Condition, ...], bins: dict[str, Bands]
    ) -> tuple[list[str], str, dict[str, Any]]:
        return filter_sql(_quote, _number, "STRING", _param, columns, where, bins)

    def grouped(
        self,
        by: list[str],
        value: str | None = None,
        bounds: tuple[float, float] | None = None,
        weight: str | None = None,
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> GroupedRows:
        """One GROUP BY run by Spark (see sources.FileSource.grouped): only the cells come back."""
        bins = bins or {}
        needed = by + [c for c in (value, weight) if c] + [c.column for c in where]
        actual = self.require_columns(needed)
        check_numeric(self.dataset, actual, numeric_columns(where, bins))
        keys, clause, params = self._filtered(by, where, bins)
        aggregates = aggregate_sql(_quote, _number, "DOUBLE", _param, value, bounds, weight)
        if value and bounds:
            params |= {"lo": float(bounds[0]), "hi": float(bounds[1])}
        groups = ", ".join(str(i + 1) for i in range(len(by)))
        sql = f"SELECT {', '.join([*keys, *aggregates])} FROM {self._view}{clause}"
        rows = self._collect(sql + (f" GROUP BY {groups}" if groups else ""), params)
        grouped = grouped_rows(rows, len(by), value, weight)
        return require_rows(self.dataset, grouped, filtered=bool(where))

    def read_text(
        self,
        columns: list[str],
        where: tuple[Condition, ...] = (),
        bins: dict[str, Bands] | None = None,
    ) -> pa.Table:
        """Record-level columns as text (NULL stays NULL; a binned column as its band's label),
        only rows that pass `where`, collected as Arrow: only these columns leave Spark."""
        bins = bins or {}
        actual = self.require_columns([*columns, *(c.column for c in where)])
        check_numeric(self.dataset, actual, numeric_columns(where, bins))
        keys, clause, params = self._filtered(columns, where, bins)
        select = ", ".join(f"{k} AS {_quote(c)}" for k, c in zip(keys, columns, strict=True))
        frame = self._sql(f"SELECT {select} FROM {self._view}{clause}", params)
        table = self._guard(frame.toArrow)
        schema = pa.schema([(c, pa.string()) for c in columns])
        # Spark 4 hands strings over as large_string; the protocols expect string
        arrays = [table.column(i).cast(pa.string()) for i in range(len(columns))]
        return pa.Table.from_arrays(arrays, schema=schema)

    def summary(self) -> DatasetSummary:
        self.require_columns([])
        fields = self._frame.schema.fields
        nulls = ", ".join(f"count(*) - count({_quote(f.name)})" for f in fields)
        row = self._collect(f"SELECT count(*), {nulls} FROM {self._view}")[0]
        columns = [
            ColumnSummary(f.name, spark_kind(f.dataType.simpleString()),
                          f.dataType.simpleString(), int(n))
            for f, n in zip(fields, row[1:], strict=True)
        ]  # fmt: skip
        if self.path is not None:
            kind = "folder" if self.path.is_dir() else "file"
            where = f"Parquet {kind} {self.path} through Spark ({shown_master(self.master)})"
        elif self.uri is not None:
            where = f"Parquet at {_shown_uri(self.uri)} through Spark ({shown_master(self.master)})"
        else:
            where = f"Spark table {self.table} ({shown_master(self.master)})"
        return DatasetSummary(self.dataset, where, int(row[0]), columns)


def _conf(dataset: str, spec: Any) -> dict[str, str]:
    if spec is None:
        return {}
    if not isinstance(spec, dict) or not all(
        isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in spec.items()
    ):
        raise ConfigError(f"dataset {dataset}: `conf` maps Spark settings to values")
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spec.items()}


def _master(dataset: str, spec: dict[str, Any]) -> str:
    """`master`, or the environment variable `master_env` names: a Spark Connect URL with a
    token is a secret, kept out of node.toml as a database password is (`url_env`)."""
    if "master_env" in spec:
        name = spec["master_env"]
        if "master" in spec or not isinstance(name, str) or not os.environ.get(name, "").strip():
            raise ConfigError(
                f"dataset {dataset}: `master_env` names an environment variable that holds the "
                "master URL (set it for the node; give `master` or `master_env`, not both)"
            )
        return os.environ[name].strip()
    master = spec.get("master")
    if not isinstance(master, str) or not master.strip():
        raise ConfigError(f'dataset {dataset}: `master` is the Spark master, e.g. "local[*]"')
    if _is_connect(master) and "token=" in master:
        raise ConfigError(
            f"dataset {dataset}: a Spark Connect URL with a token is a secret: put it in an "
            "environment variable and name it with `master_env`"
        )
    return master


def spark_source(dataset: str, spec: dict[str, Any]) -> SparkSource:
    """A SparkSource from a `[datasets.NAME]` table with `engine = "spark"` (docs/sources.md);
    nothing is started until the dataset is used."""
    unknown = set(spec) - SPARK_KEYS
    if unknown:
        raise ConfigError(f"dataset {dataset}: unknown field(s) {', '.join(sorted(unknown))}")
    master = _master(dataset, spec)
    given = [k for k in ("table", "path", "uri") if k in spec]
    if len(given) != 1 or not isinstance(spec[given[0]], str) or not spec[given[0]].strip():
        raise ConfigError(
            f"dataset {dataset}: give exactly one of `table`, `path` or `uri` (Parquet)"
        )
    if "uri" in spec and not urlsplit(spec["uri"]).scheme:
        raise ConfigError(f"dataset {dataset}: `uri` is a URL such as hdfs://... or s3a://...")
    declared = parse_declared(dataset, spec.get("columns"))
    conf = _conf(dataset, spec.get("conf"))
    location = {"path": Path(spec["path"])} if "path" in spec else {given[0]: spec[given[0]]}
    return SparkSource(dataset, master, declared=declared, conf=conf, **location)

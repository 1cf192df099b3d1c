"""A real PostgreSQL server for tests and benchmarks: initdb into a temporary folder, listen on
127.0.0.1 on a free port (unix socket in that folder), stop and delete it at the end.

Binaries: $JOINTSTATS_PG_BIN, else `initdb` on PATH, else the newest /usr/lib/postgresql/NN/bin
(Debian's package, which .ci/run installs when `initdb` is missing), else those of the
`pgserver` wheel (a dev dependency, so a machine with only Python and PyPI runs the tests too).
PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user
($JOINTSTATS_PG_USER, else `postgres`, else `nobody`) through `runuser`. The fixture fails
(never skips) when no server can be started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psycopg
import pytest
from psycopg import sql

ADMIN = "jointstats"
READER = "reader"  # the role nodes use: SELECT only
DATABASE = "survey"
PG_TYPES = {"i": "bigint", "u": "bigint", "f": "double precision", "b": "boolean"}


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path:
    if os.environ.get("JOINTSTATS_PG_BIN"):
        return Path(os.environ["JOINTSTATS_PG_BIN"])
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
    )
    if versions:
        return versions[-1].parent
    wheel = _wheel_bin_dir()
    if wheel is None:
        raise PostgresUnavailable(
            "no PostgreSQL binaries: install them (apt-get install postgresql, as .ci/run does), "
            "or the dev extra's `pgserver` wheel, or set JOINTSTATS_PG_BIN to the folder "
            "holding initdb and pg_ctl"
        )
    return wheel


def _wheel_bin_dir() -> Path | None:
    """PostgreSQL from the `pgserver` wheel (a dev dependency), for machines without a
    system PostgreSQL: `make test` then needs nothing beyond Python and PyPI."""
    try:
        import pgserver
    except ImportError:
        return None
    candidate = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return candidate if (candidate / "initdb").exists() else None


def _unprivileged_user() -> str:
    """`postgres` (Debian's package makes it), else `nobody`, which every Linux has."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return "postgres"


def _runuser() -> str:
    for candidate in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser"):
        if candidate and Path(candidate).exists():
            return candidate
    raise PostgresUnavailable("running as root needs `runuser` (util-linux) to start PostgreSQL")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    bin: Path
    user: str | None  # run the server as this user (when we are root)

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = _bin_dir()
        user = None
        if os.geteuid() == 0:
            user = os.environ.get("JOINTSTATS_PG_USER") or _unprivileged_user()
            try:
                account = pwd.getpwnam(user)
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root, and PostgreSQL refuses root: create the user {user!r} "
                    "(useradd --system postgres) or set JOINTSTATS_PG_USER"
                ) from None
        root = Path(tempfile.mkdtemp(prefix="jointstats-pg-"))
        if user:
            os.chown(root, account.pw_uid, account.pw_gid)
        server = cls(root, free_port(), bin_dir, user)
        try:
            server._init_and_start()
        except (OSError, subprocess.SubprocessError, psycopg.Error, PostgresUnavailable) as exc:
            log = server.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            server.stop()
            raise PostgresUnavailable(
                f"cannot start PostgreSQL ({exc}); log tail:\n{tail}"
            ) from exc
        return server

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            command = [_runuser(), "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise PostgresUnavailable(f"{args[0]} failed: {(done.stderr or done.stdout)[-1500:]}")

    def _init_and_start(self) -> None:
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", ADMIN, "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(data), "-o", options, "-l", str(self.root / "server.log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip
        with psycopg.connect(self.dsn("postgres", ADMIN), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            conn.execute(f"CREATE ROLE {READER} LOGIN PASSWORD 'reader-password'")
        with self.connect() as conn:
            conn.execute(
                f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER}"
            )

    def dsn(self, database: str = DATABASE, user: str = ADMIN) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={database} user={user}"

    def url(self, user: str = READER) -> str:
        """SQLAlchemy URL as a node would use it (the reader role, a password: keep in env)."""
        password = ":reader-password" if user == READER else ""
        return f"postgresql://{user}{password}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn(), autocommit=True)

    def load(self, table: str, frame: pd.DataFrame) -> None:
        """(Re)create `table` with `frame`'s columns and rows (NaN/None become NULL)."""
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(
                sql.Identifier(c), sql.SQL(PG_TYPES.get(frame[c].dtype.kind, "text"))
            )
            for c in frame.columns
        )
        name = sql.Identifier(table)
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(name, columns))
            with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(name)) as copy:
                for row in frame.astype(object).where(frame.notna(), None).itertuples(False):
                    copy.write_row(row)

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError, PostgresUnavailable):
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server with an empty database `survey` and a read-only role."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.fail(f"the PostgreSQL tests need a server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()

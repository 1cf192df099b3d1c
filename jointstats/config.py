"""Configuration files of the coordinator, a node and an analyst client (TOML).

Relative paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import datetime
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jointstats.errors import ConfigError

DEFAULT_MIN_CELL_FLOOR = 5
DEFAULT_SESSION_TIMEOUT = 300.0
NODE_KEYS = {
    "name", "coordinator", "roster", "keys", "state_dir", "datasets", "policy",
    "session_timeout", "max_sessions",
}  # fmt: skip
POLICY_KEYS = {
    "min_cell", "kinds", "max_cells", "max_rows", "partners", "analysts", "budgets",
    "require_epsilon", "require_epsilon_datasets", "pool_with", "protection",
    "approval", "approval_datasets", "approval_analysts",
}  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def _no_unknown(doc: dict[str, Any], allowed: set[str], source: Path, where: str = "") -> None:
    """A typo in a config key must not silently fall back to a default."""
    unknown = sorted(set(doc) - allowed)
    if unknown:
        place = f" in [{where}]" if where else ""
        raise ConfigError(
            f"{source}: unknown key(s){place}: {', '.join(unknown)}; "
            f"expected some of: {', '.join(sorted(allowed))}"
        )


def _path(doc: dict[str, Any], key: str, base: Path, source: Path) -> Path:
    if key not in doc:
        raise ConfigError(f"config {source} lacks `{key}`")
    return (base / str(doc[key])).resolve()


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    roster: Path
    keys: Path
    db: Path
    port_file: Path | None = None
    job_timeout: float = DEFAULT_SESSION_TIMEOUT + 60

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        doc, base = _read(path), Path(path).resolve().parent
        _no_unknown(doc, {"listen", "roster", "keys", "db", "port_file", "job_timeout"}, path)
        return cls(
            listen=str(doc.get("listen", "127.0.0.1:50051")),
            roster=_path(doc, "roster", base, path),
            keys=_path(doc, "keys", base, path),
            db=(base / doc.get("db", "coordinator.sqlite")).resolve(),
            port_file=(base / doc["port_file"]).resolve() if "port_file" in doc else None,
            job_timeout=float(doc.get("job_timeout", DEFAULT_SESSION_TIMEOUT + 60)),
        )


@dataclass(frozen=True)
class GrantTerms:
    """The terms of one `[[analysts]]` entry beside its datasets: a name for people, the last
    day (UTC) it may be used and what it is for (docs/operator.md, "Grants")."""

    name: str = ""
    expires: datetime.date | None = None
    purpose: str = ""

    def expired(self, today: datetime.date | None = None) -> bool:
        today = today or datetime.datetime.now(datetime.UTC).date()
        return self.expires is not None and today > self.expires


def _grant_terms(entry: dict[str, Any], source: Path) -> GrantTerms:
    unknown = sorted(set(entry) - {"fingerprint", "datasets", "name", "expires", "purpose"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) in [[analysts]]: {', '.join(unknown)}; "
            "expected some of: datasets, expires, fingerprint, name, purpose"
        )
    expires = entry.get("expires")
    if isinstance(expires, str):
        try:
            expires = datetime.date.fromisoformat(expires)
        except ValueError:
            expires = "not a date"
    if expires is not None and (
        isinstance(expires, datetime.datetime) or not isinstance(expires, datetime.date)
    ):
        raise ConfigError(f"{source}: [[analysts]] expires must be a date such as 2027-06-30")
    name, purpose = entry.get("name", ""), entry.get("purpose", "")
    if not isinstance(name, str) or not isinstance(purpose, str):
        raise ConfigError(f"{source}: [[analysts]] name and purpose must be text")
    return GrantTerms(name, expires, purpose)


@dataclass(frozen=True)
class Policy:
    """What this node agrees to (docs/operator.md, "Policy"). The default refuses every analyst."""

    min_cell: int = DEFAULT_MIN_CELL_FLOOR
    # every suppressed cell must keep at least this many possible values against the
    # attacker's linear programme (0: as many as the effective min_cell)
    protection: int = 0
    kinds: tuple[str, ...] = ("crosstab", "linked_crosstab")
    max_cells: int = 20_000
    max_rows: int = 0  # rows a job may use from one dataset; 0 = no limit
    partners: tuple[str, ...] = ("*",)
    # analyst signing-key fingerprint -> dataset (or "*") -> allowed columns (or ["*"])
    analysts: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    terms: dict[str, GrantTerms] = field(default_factory=dict)  # fingerprint -> name, expiry
    budgets: dict[str, float] = field(default_factory=dict)  # epsilon per dataset
    # Against differencing (docs/operator.md, "Policy"): jobs on this node's data (every
    # dataset, or the listed ones) must carry epsilon; pooled jobs must have exactly these inputs.
    require_epsilon: bool = False
    require_epsilon_datasets: tuple[str, ...] = ()
    pool_with: tuple[str, ...] = ()  # empty = any input set
    # "manual": accepted jobs wait for the operator (`jointstats node approve`), only those on
    # the listed datasets / by the listed analysts (names or fingerprints) when lists are given
    approval: str = "auto"
    approval_datasets: tuple[str, ...] = ()
    approval_analysts: tuple[str, ...] = ()

    def allows_partner(self, node: str) -> bool:
        return "*" in self.partners or node in self.partners

    @classmethod
    def from_doc(cls, doc: dict[str, Any], source: Path) -> Policy:
        _no_unknown(doc, POLICY_KEYS, source, "policy")
        min_cell = doc.get("min_cell", DEFAULT_MIN_CELL_FLOOR)
        if not isinstance(min_cell, int) or min_cell < 1:
            raise ConfigError(f"{source}: policy min_cell must be a whole number >= 1")
        protection = doc.get("protection", 0)
        if not isinstance(protection, int) or isinstance(protection, bool) or protection < 0:
            raise ConfigError(f"{source}: policy protection must be a whole number >= 0")
        analysts: dict[str, dict[str, tuple[str, ...]]] = {}
        terms: dict[str, GrantTerms] = {}
        for entry in doc.get("analysts", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
                raise ConfigError(f"{source}: each [[analysts]] entry needs a `fingerprint`")
            datasets = entry.get("datasets", {})
            analysts[entry["fingerprint"]] = {d: tuple(cols) for d, cols in datasets.items()}
            terms[entry["fingerprint"]] = _grant_terms(entry, source)
        try:
            budgets = {str(d): float(e) for d, e in doc.get("budgets", {}).items()}
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source}: [budgets] maps dataset names to epsilon numbers"
            ) from None
        require_epsilon = doc.get("require_epsilon", False)
        if not isinstance(require_epsilon, bool):
            raise ConfigError(f"{source}: policy require_epsilon must be true or false")
        names: dict[str, tuple[str, ...]] = {}
        for key in (
            "require_epsilon_datasets",
            "pool_with",
            "approval_datasets",
            "approval_analysts",
        ):
            value = doc.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: policy {key} must be a list of names")
            names[key] = tuple(value)
        return cls(
            min_cell=min_cell,
            protection=protection,
            kinds=tuple(doc.get("kinds", cls.kinds)),
            max_cells=int(doc.get("max_cells", cls.max_cells)),
            max_rows=int(doc.get("max_rows", 0)),
            partners=tuple(doc.get("partners", cls.partners)),
            analysts=analysts,
            terms=terms,
            budgets=budgets,
            require_epsilon=require_epsilon,
            require_epsilon_datasets=names["require_epsilon_datasets"],
            pool_with=names["pool_with"],
            approval=_approval(doc.get("approval", "auto"), source),
            approval_datasets=names["approval_datasets"],
            approval_analysts=names["approval_analysts"],
        )

    @classmethod
    def load(cls, spec: dict[str, Any] | str, base: Path, source: Path) -> Policy:
        """`policy = "policy.toml"` (a file) or an inline [policy] table."""
        if isinstance(spec, str):
            path = (base / spec).resolve()
            return cls.from_doc(_read(path), path)
        return cls.from_doc(spec, source)


def _approval(value: Any, source: Path) -> str:
    if value not in ("auto", "manual"):
        raise ConfigError(f'{source}: policy approval must be "auto" or "manual"')
    return str(value)


def load_datasets(doc: dict[str, Any], base: Path, source: Path) -> dict[str, dict[str, Any]]:
    """A node config's [datasets.NAME] tables (docs/sources.md), with `path` and `url_file`
    made absolute; the entries are checked by node/sources.py when a source is built."""
    datasets: dict[str, dict[str, Any]] = {}
    tables = doc.get("datasets", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config {source}: `datasets` must be a table of [datasets.NAME]")
    for name, entry in tables.items():
        if not isinstance(entry, (str, dict)):
            raise ConfigError(f"config {source}: dataset {name} must be a path or a table")
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        for key in ("path", "url_file"):
            if key in entry:
                entry[key] = str((base / str(entry[key])).resolve())
        datasets[name] = entry
    return datasets


def load_node_datasets(path: Path) -> dict[str, dict[str, Any]]:
    """Only the datasets of a node config file (`jointstats local --node NAME=node.toml`)."""
    return load_datasets(_read(path), Path(path).resolve().parent, path)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    coordinator: str
    roster: Path
    keys: Path
    state_dir: Path
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    max_sessions: int = 4

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        doc, base = _read(path), Path(path).resolve().parent
        _no_unknown(doc, NODE_KEYS, path)
        if "name" not in doc:
            raise ConfigError(f"config {path} lacks `name`")
        datasets = load_datasets(doc, base, path)
        return cls(
            name=str(doc["name"]),
            coordinator=str(doc.get("coordinator", "127.0.0.1:50051")),
            roster=_path(doc, "roster", base, path),
            keys=_path(doc, "keys", base, path),
            state_dir=(base / doc.get("state_dir", ".")).resolve(),
            datasets=datasets,
            policy=Policy.load(doc.get("policy", {}), base, path),
            session_timeout=float(doc.get("session_timeout", DEFAULT_SESSION_TIMEOUT)),
            max_sessions=int(doc.get("max_sessions", 4)),
        )


@dataclass(frozen=True)
class ClientConfig:
    coordinator: str
    roster: Path
    keys: Path

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        doc, base = _read(path), Path(path).resolve().parent
        _no_unknown(doc, {"coordinator", "roster", "keys"}, path)
        return cls(
            coordinator=str(doc.get("coordinator", "127.0.0.1:50051")),
            roster=_path(doc, "roster", base, path),
            keys=_path(doc, "keys", base, path),
        )

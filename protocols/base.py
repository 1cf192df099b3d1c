"""What a protocol module provides, and the plain data passed between its steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from jointstats.protocols.release import Disclosure

MIN_PARTIES = 3


@dataclass(frozen=True)
class FederationView:
    """What the coordinator knows when it plans a job: roles, who is online, what they expose."""

    roles: dict[str, str]
    online: set[str]
    datasets: dict[str, set[str]]

    def compute_nodes(self) -> list[str]:
        return sorted(n for n, r in self.roles.items() if r == "compute" and n in self.online)


@dataclass(frozen=True)
class Plan:
    """The parties of one MPC session, in party-id order, and which of them hold input data."""

    parties: tuple[str, ...]
    data_parties: tuple[str, ...]


@dataclass(frozen=True)
class Outflow:
    """One kind of value that leaves a node for its partners (an egress statement's line).

    `kind` and `phase` name the relay message kind (node/relay_link.py: MPC, DATA) and the
    session phase that sends it, as the node's audit log records the bytes sent afterwards.
    Per recipient: `values` values of `value_bytes` bytes each plus `header_bytes`, in
    `messages` messages; `values` None when it is not known in advance (the matched count),
    `at_most` when it is an upper bound."""

    to: tuple[str, ...]
    kind: str
    phase: str
    what: str
    values: int | None = None
    value_bytes: int = 0
    messages: int | None = None
    header_bytes: int = 0
    at_most: bool = False

    @property
    def payload_bytes(self) -> int | None:
        """Bytes per recipient as the protocol hands them to the relay link (no framing)."""
        if self.values is None:
            return None
        return self.values * self.value_bytes + self.header_bytes

    def text(self) -> str:
        count = "" if self.values is None else f"{'up to ' if self.at_most else ''}{self.values:,} "
        each = "each of " if len(self.to) > 1 else ""
        return f"{count}{self.what} to {each}{', '.join(self.to)}"


@dataclass(frozen=True)
class Egress:
    """A protocol's part of a node's egress statement (node/egress.py adds the rest)."""

    outflows: tuple[Outflow, ...]
    table: str  # the released table's shape
    leakage: str  # what the partners learn, from the protocol's leakage statement


class PartyChannel(Protocol):
    """Sealed, ordered messages between two parties of a session, outside MPyC."""

    def send(self, pid: int, payload: bytes) -> None: ...

    async def recv(self, pid: int) -> bytes: ...


@dataclass
class SessionContext:
    """Given to a protocol's MPC program inside the session worker."""

    runtime: Any  # the mpyc Runtime
    pid: int
    parties: tuple[str, ...]
    data_parties: tuple[str, ...]
    disclosure: dict[str, Any]  # the session's effective settings (min_cell, protection, ...)
    channel: PartyChannel | None = None
    timings: dict[str, float] = field(default_factory=dict)
    progress: Callable[[str], None] = field(default=lambda phase: None)  # reports a phase name

    @property
    def min_cell(self) -> int:
        return int(self.disclosure["min_cell"])

    def pid_of(self, name: str) -> int:
        return self.parties.index(name)


class JobProtocol(Protocol):
    """The interface every module in protocols/ implements (see protocols/crosstab.py)."""

    kind: str
    version: int  # part of the session description: parties must run the same version

    def parse(self, doc: dict[str, Any]) -> Any:
        """Validate a job document; raise JobError with a one-line reason."""

    def plan(self, job: Any, view: FederationView) -> Plan:
        """Choose the session's parties; raise JobError when the job cannot run."""

    def columns_used(self, job: Any, node: str) -> dict[str, list[str]]:
        """Datasets and columns of `node` that the job touches (for policy and audit)."""

    def disclosure(self, job: Any) -> Disclosure:
        """The job's `[disclosure]` settings (protocols.release.parse_disclosure)."""

    def signed_parties(self, job: Any) -> tuple[tuple[str, ...] | None, set[str]]:
        """(input nodes named by the signed job or None, other parties it names): nodes check
        the coordinator's session against them."""

    def local_step(self, job: Any, node: str, sources: dict[str, Any]) -> Any:
        """Aggregate or prepare this node's data; runs in the session worker."""

    def local_facts(self, job: Any, local: Any) -> dict[str, Any]:
        """Facts about this node's own contribution for its audit log (row counts, never values)."""

    async def mpc_program(self, job: Any, ctx: SessionContext, local: Any) -> dict[str, Any]:
        """Run the MPC part and return the released result document."""

    def egress(self, job: Any, node: str, plan: Plan, rows: int | None) -> Egress:
        """What leaves `node` and to whom, before the job runs; `rows` is the node's own row
        count when the protocol needs it (linked jobs), None when unknown."""

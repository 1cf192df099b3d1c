"""`jointstats node check`: a node's preflight. Every dataset (readable, declared columns and
types, a summary without values), then the node's identity and policy against the roster:

- its keys are the ones the roster pins for its name (certificate, X25519, Ed25519), and its
  name is the one in its keys and its certificate;
- every analyst fingerprint in the policy is an analyst's *signing* fingerprint in the roster,
  every partner and `pool_with` name a node of the roster; grants past `expires` are named;
- optionally (`--reach`) the coordinator answers a mutual-TLS handshake.

Nothing here reads or prints a value. A compute-only node has no datasets: that is fine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from jointstats.config import NodeConfig
from jointstats.errors import JointstatsError
from jointstats.keys import Identity, Roster, cert_fingerprint
from jointstats.node.sources import DatasetSummary, source_for

REACH_SECONDS = 5.0


@dataclass(frozen=True)
class Finding:
    """One line of the preflight: `level` is ok, warning or problem (problems fail the check)."""

    level: str
    text: str


def check_node(config: NodeConfig) -> Iterator[DatasetSummary]:
    """One summary per dataset, in config order; raises at the first dataset with a problem."""
    for name, entry in config.datasets.items():
        yield source_for(name, entry).summary()


def summary_lines(summary: DatasetSummary) -> list[str]:
    """Plain text for the CLI: shape, types and null counts."""
    lines = [f"dataset {summary.dataset}: {summary.description}, {summary.rows} rows"]
    width = max((len(c.name) for c in summary.columns), default=0)
    for column in summary.columns:
        lines.append(
            f"  {column.name:<{width}}  {column.kind:<7}  {column.engine_type:<14}  "
            f"{column.nulls} null"
        )
    return lines


def _cert_name(cert_pem: bytes) -> str:
    names = x509.load_pem_x509_certificate(cert_pem).subject
    common = names.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else ""


def _raw(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def check_identity(config: NodeConfig, roster: Roster, identity: Identity) -> list[Finding]:
    """This node's keys and name against the roster and its own certificate."""
    found: list[Finding] = []
    problem = lambda text: found.append(Finding("problem", text))  # noqa: E731
    if identity.name != config.name:
        problem(f"the config names this node {config.name!r} but its keys are {identity.name!r}'s")
    cert_name = _cert_name(identity.tls_cert_pem)
    if cert_name != config.name:
        problem(f"the node's certificate is issued to {cert_name!r}, not {config.name!r}")
    member = roster.members.get(config.name)
    if member is None:
        problem(f"{config.name!r} is not in the roster {config.roster}")
        return found
    if member.role not in ("node", "compute") or (config.datasets and member.role != "node"):
        wanted = "node" if config.datasets else "node' or 'compute"
        problem(f"the roster lists {config.name} as {member.role!r}, not '{wanted}'")
    keys = {
        "TLS certificate": cert_fingerprint(identity.tls_cert_pem) == member.fingerprint,
        "X25519 key": _raw(identity.kx_private) == member.kx_public,
        "Ed25519 signing key": _raw(identity.sign_private) == member.sign_public,
    }
    wrong = [name for name, same in keys.items() if not same]
    if wrong:
        problem(
            f"the roster's entry for {config.name} pins another {', '.join(wrong)} than the "
            f"keys in {config.keys} (new keys not yet in the roster, or the wrong key folder?)"
        )
    else:
        found.append(Finding("ok", f"keys match the roster entry of {config.name} ({member.role})"))
    return found


def check_policy(config: NodeConfig, roster: Roster) -> list[Finding]:
    """Analyst fingerprints and partner names of the policy against the roster."""
    found: list[Finding] = []
    policy = config.policy
    analysts = {m.signing_fingerprint: m for m in roster.members.values() if m.role == "analyst"}
    identities = {m.identity_fingerprint: m.name for m in roster.members.values()}
    for fingerprint in policy.analysts:
        terms = policy.terms.get(fingerprint)
        label = f"analyst {terms.name} " if terms and terms.name else "analyst "
        if fingerprint in analysts:
            member = analysts[fingerprint]
            if terms and terms.name and terms.name != member.name:
                found.append(
                    Finding(
                        "warning",
                        f"{label}({fingerprint[:12]}…) is {member.name!r} in the roster",
                    )
                )
            if terms and terms.expired():
                found.append(
                    Finding("warning", f"{label}{member.name}: grant expired on {terms.expires}")
                )
            continue
        hint = (
            f": that is {identities[fingerprint]}'s identity fingerprint; use the signing one "
            "(`jointstats keys show roster.toml`)"
            if fingerprint in identities
            else " (revoked, or a typo?)"
        )
        found.append(
            Finding(
                "problem",
                f"policy {label}fingerprint {fingerprint[:12]}… is no analyst's signing "
                f"fingerprint in the roster{hint}",
            )
        )
    nodes = {m.name for m in roster.members.values() if m.role in ("node", "compute")}
    for key, names in (("partners", policy.partners), ("pool_with", policy.pool_with)):
        strangers = [n for n in names if n != "*" and n not in nodes]
        if strangers:
            found.append(
                Finding(
                    "problem",
                    f"policy {key} names {', '.join(strangers)}, not a node of the roster",
                )
            )
    if not any(f.level == "problem" for f in found):
        count = len(policy.analysts)
        found.append(Finding("ok", f"policy: {count} analyst(s) and partners found in the roster"))
    return found


def check_reach(config: NodeConfig, roster: Roster, identity: Identity) -> Finding:
    """A mutual-TLS handshake with the coordinator (no call is made)."""
    import grpc

    from jointstats.transport import channel_credentials, channel_options

    channel = grpc.secure_channel(
        config.coordinator, channel_credentials(identity, roster), options=channel_options()
    )
    try:
        grpc.channel_ready_future(channel).result(timeout=REACH_SECONDS)
    except grpc.FutureTimeoutError:
        return Finding(
            "problem",
            f"the coordinator at {config.coordinator} did not complete a TLS handshake within "
            f"{REACH_SECONDS:g} s (down, firewalled, or not the roster's coordinator?)",
        )
    finally:
        channel.close()
    return Finding("ok", f"the coordinator at {config.coordinator} is reachable (mutual TLS)")


def preflight(config: NodeConfig, reach: bool = False) -> list[Finding]:
    """Identity, policy and (optionally) reachability findings; configuration errors that
    stop the check (no roster, no keys) are raised."""
    roster = Roster.load(config.roster)
    try:
        identity = Identity.load(config.keys)
    except JointstatsError as exc:
        return [Finding("problem", str(exc))]
    found = check_identity(config, roster, identity) + check_policy(config, roster)
    if reach:
        found.append(check_reach(config, roster, identity))
    return found

"""Keys, certificates and the roster.

Every member (coordinator, node, compute-only node, analyst) owns three keys made here:
a TLS key with a self-signed certificate (ECDSA P-256), an X25519 key for end-to-end sealing of
MPC traffic, and an Ed25519 key for signatures. The roster lists each member's public parts; it
is the trust store: a TLS peer is accepted only when its certificate is pinned in the roster.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import logging
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import NameOID

from jointstats.errors import ConfigError

log = logging.getLogger(__name__)
ROLES = ("coordinator", "node", "compute", "analyst")
CERT_DAYS = 825
# Clients pin the coordinator's certificate; this name in its SAN lets them dial any address.
COORDINATOR_TLS_NAME = "jointstats-coordinator"


@dataclass(frozen=True)
class Member:
    """The public entry of one roster member."""

    name: str
    role: str
    cert_pem: str
    kx_public: bytes
    sign_public: bytes
    address: str = ""

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the TLS certificate: how the coordinator recognises a caller."""
        return cert_fingerprint(self.cert_pem.encode())

    @property
    def identity_fingerprint(self) -> str:
        """SHA-256 over all public keys (TLS certificate, X25519, Ed25519): what operators
        compare out of band, so that no key of an entry can be swapped unnoticed."""
        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        der = cert.public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der + self.kx_public + self.sign_public).hexdigest()

    @property
    def signing_fingerprint(self) -> str:
        """SHA-256 of the Ed25519 key: how node policies name an analyst."""
        return hashlib.sha256(self.sign_public).hexdigest()

    def to_toml(self) -> dict[str, str]:
        entry = {
            "name": self.name,
            "role": self.role,
            "fingerprint": self.fingerprint,
            "kx_public": base64.b64encode(self.kx_public).decode(),
            "sign_public": base64.b64encode(self.sign_public).decode(),
            "cert": self.cert_pem,
        }
        if self.address:
            entry["address"] = self.address
        return entry

    @classmethod
    def from_toml(cls, entry: dict, source: str) -> Member:
        try:
            member = cls(
                name=entry["name"],
                role=entry["role"],
                cert_pem=entry["cert"],
                kx_public=base64.b64decode(entry["kx_public"]),
                sign_public=base64.b64decode(entry["sign_public"]),
                address=entry.get("address", ""),
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{source}: member entry lacks or mangles {exc}") from None
        if member.role not in ROLES:
            raise ConfigError(f"{source}: member {member.name} has unknown role {member.role!r}")
        if "fingerprint" in entry and entry["fingerprint"] != member.fingerprint:
            raise ConfigError(f"{source}: fingerprint of {member.name} does not match its cert")
        return member


@dataclass
class Roster:
    """All members of a federation, pinned by certificate."""

    members: dict[str, Member] = field(default_factory=dict)

    @property
    def coordinator(self) -> Member:
        for member in self.members.values():
            if member.role == "coordinator":
                return member
        raise ConfigError("roster has no coordinator entry")

    def get(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise ConfigError(f"{name!r} is not in the roster") from None

    def by_fingerprint(self, fingerprint: str) -> Member | None:
        for member in self.members.values():
            if member.fingerprint == fingerprint:
                return member
        return None

    def trust_bundle(self) -> bytes:
        """Concatenated certificates: the only roots a TLS peer may chain to."""
        return "".join(m.cert_pem for m in self.members.values()).encode()

    def save(self, path: Path) -> None:
        doc = {"members": [m.to_toml() for m in self.members.values()]}
        path.write_text(tomli_w.dumps(doc, multiline_strings=True))

    @classmethod
    def load(cls, path: Path) -> Roster:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read roster {path}: {exc}") from None
        roster = cls()
        for entry in doc.get("members", []):
            member = Member.from_toml(entry, str(path))
            roster.members[member.name] = member
        return roster


class RosterFile:
    """A roster that follows its file: `refresh()` reloads it in place when the file changed,
    so that every holder of `.roster` sees added and revoked members."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.roster = Roster.load(self.path)
        self.version = 0
        self._mtime = self._stat()
        self._lock = threading.Lock()  # gRPC's TLS fetcher calls refresh() from its threads

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return -1

    def refresh(self) -> bool:
        """Reload if the file changed; True if this call reloaded it. Callers that must react to
        every change compare `version` instead (another caller may have reloaded first)."""
        with self._lock:
            return self._reload_if_changed()

    def _reload_if_changed(self) -> bool:
        mtime = self._stat()
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            fresh = Roster.load(self.path)
        except ConfigError as exc:
            log.error("roster %s not reloaded (keeping the previous one): %s", self.path, exc)
            return False
        self.roster.members.clear()
        self.roster.members.update(fresh.members)
        self.version += 1
        return True


@dataclass(frozen=True)
class Identity:
    """A member's private keys as loaded from its key directory."""

    name: str
    tls_key_pem: bytes
    tls_cert_pem: bytes
    kx_private: x25519.X25519PrivateKey
    sign_private: ed25519.Ed25519PrivateKey

    @classmethod
    def load(cls, key_dir: Path) -> Identity:
        key_dir = Path(key_dir)
        try:
            member = tomllib.loads((key_dir / "member.toml").read_text())
            kx = serialization.load_pem_private_key((key_dir / "kx.key").read_bytes(), None)
            sign = serialization.load_pem_private_key((key_dir / "sign.key").read_bytes(), None)
            return cls(
                name=member["name"],
                tls_key_pem=(key_dir / "tls.key").read_bytes(),
                tls_cert_pem=(key_dir / "tls.crt").read_bytes(),
                kx_private=kx,  # type: ignore[arg-type]
                sign_private=sign,  # type: ignore[arg-type]
            )
        except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot load keys from {key_dir}: {exc}") from None


def cert_fingerprint(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _self_signed_cert(name: str, key: ec.EllipticCurvePrivateKey, hosts: list[str]) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _raw_public(key: x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_member(
    key_dir: Path,
    name: str,
    role: str,
    hosts: list[str] | None = None,
    address: str = "",
) -> Member:
    """Create a member's keys in key_dir (private, mode 0600) and return its public entry."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    kx_key = x25519.X25519PrivateKey.generate()
    sign_key = ed25519.Ed25519PrivateKey.generate()
    names = list(hosts or ["localhost", "127.0.0.1"])
    if role == "coordinator":
        names.append(COORDINATOR_TLS_NAME)
    cert_pem = _self_signed_cert(name, tls_key, names)
    for filename, data in (
        ("tls.key", _pem(tls_key)),
        ("kx.key", _pem(kx_key)),
        ("sign.key", _pem(sign_key)),
    ):
        path = key_dir / filename
        path.write_bytes(data)
        path.chmod(0o600)
    (key_dir / "tls.crt").write_bytes(cert_pem)
    member = Member(
        name, role, cert_pem.decode(), _raw_public(kx_key), _raw_public(sign_key), address
    )
    (key_dir / "member.toml").write_text(tomli_w.dumps(member.to_toml(), multiline_strings=True))
    return member


def load_member(path: Path) -> Member:
    try:
        return Member.from_toml(tomllib.loads(Path(path).read_text()), str(path))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read member file {path}: {exc}") from None

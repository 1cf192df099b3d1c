"""gRPC over mutual TLS with pinned certificates, and end-to-end sealing between MPC parties.

TLS: each side trusts exactly the certificates in the roster (self-signed, pinned); the server
requires a client certificate. gRPC's BoringSSL negotiates TLS 1.3.

Sealing: per session and per pair of parties, each side sends an ephemeral X25519 key signed
with its roster Ed25519 key; HKDF-SHA256 over the shared secret gives one ChaCha20-Poly1305 key
per direction. Nonces are message sequence numbers, so a dropped, replayed, reordered or altered
frame fails to open and fails the session.
"""

from __future__ import annotations

import struct

import grpc
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jointstats.errors import AuthError, PeerError, SessionMismatch
from jointstats.keys import COORDINATOR_TLS_NAME, Identity, Roster, RosterFile, cert_fingerprint

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
REGISTERED_HEADER = "jointstats-registered"  # the coordinator accepted a node's Connect stream
# A peer that goes silent (no FIN, no RST: a cable pulled, a NAT entry expired, a laptop
# suspended) must be found dead by both ends, on every connection, within about 20 s
# (docs/security.md, "Peers that disappear"). Both ends ping after KEEPALIVE_TIME_MS without
# reading anything, with or without calls, and without limit.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    # Also sets TCP_USER_TIMEOUT to this on every socket (gRFC A18; grpc.tcp_user_timeout_ms is
    # overridden by it): what catches a dead link when our pings cannot even be written
    # because the send buffer is full of unacknowledged MPC traffic.
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC core (1.85) never arms its keepalive_timeout_ms timer: an unanswered keepalive
    # ping closes the connection only after the generic ping timeout (60 s by default; the
    # error says "ping timeout"). Without this a silent peer was found after ~70 s, not ~15 s.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = GRPC_OPTIONS + [
    # the server's own pings, and the clients' it accepts (more often is a "ping strike")
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
]


def server_credentials(identity: Identity, roster_file: RosterFile) -> grpc.ServerCredentials:
    """Client certificates must chain to the roster; a changed roster file takes effect at the
    next handshake (gRPC asks the fetcher before each one)."""
    served = {"version": roster_file.version}

    def configuration() -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(identity.tls_key_pem, identity.tls_cert_pem)],
            root_certificates=roster_file.roster.trust_bundle(),
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        roster_file.refresh()
        if roster_file.version == served["version"]:
            return None
        served["version"] = roster_file.version
        return configuration()

    return grpc.dynamic_ssl_server_credentials(
        configuration(), fetch, require_client_authentication=True
    )


def channel_credentials(identity: Identity, roster: Roster) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=roster.coordinator.cert_pem.encode(),
        private_key=identity.tls_key_pem,
        certificate_chain=identity.tls_cert_pem,
    )


def channel_options() -> list[tuple[str, object]]:
    return GRPC_OPTIONS + [("grpc.ssl_target_name_override", COORDINATOR_TLS_NAME)]


def caller_fingerprint(context: grpc.ServicerContext) -> str:
    """SHA-256 fingerprint of the client's certificate as presented in the TLS handshake."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise AuthError("no client certificate")
    return cert_fingerprint(pems[0])


HANDSHAKE = b"JSH3"  # 3: frames carry batches of entries (node/relay_link.py)
HELLO_BYTES = 4 + 32 + 32 + 64  # tag, X25519 public key, session digest, Ed25519 signature


class PairSeal:
    """AEAD sealing of one pair's messages inside one session."""

    def __init__(
        self, session_id: str, my_pid: int, peer_pid: int, session_digest: bytes = bytes(32)
    ) -> None:
        self._session = session_id.encode()
        self._digest = session_digest
        self._me, self._peer = my_pid, peer_pid
        self._ephemeral = x25519.X25519PrivateKey.generate()
        self._send_aead: ChaCha20Poly1305 | None = None
        self._recv_aead: ChaCha20Poly1305 | None = None
        self._send_seq = 0
        self._recv_seq = 0

    def _transcript(self, sender: int, receiver: int, public: bytes, digest: bytes) -> bytes:
        return HANDSHAKE + self._session + struct.pack("<ii", sender, receiver) + public + digest

    def hello(self, identity: Identity) -> bytes:
        """Our ephemeral public key and our session description's digest, signed with our
        roster signing key."""
        public = self._ephemeral.public_key().public_bytes_raw()
        transcript = self._transcript(self._me, self._peer, public, self._digest)
        return HANDSHAKE + public + self._digest + identity.sign_private.sign(transcript)

    def accept_hello(self, data: bytes, peer_sign_public: bytes) -> None:
        """Check the peer's signed hello; refuse it when the peer runs a different session
        description than ours (before any share is sent)."""
        if len(data) != HELLO_BYTES or not data.startswith(HANDSHAKE):
            raise PeerError(f"party {self._peer} sent a malformed session handshake")
        public, digest, signature = data[4:36], data[36:68], data[68:]
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(peer_sign_public).verify(
                signature, self._transcript(self._peer, self._me, public, digest)
            )
        except InvalidSignature:
            raise AuthError(
                f"party {self._peer}'s session key is not signed by its roster key"
            ) from None
        if digest != self._digest:
            raise SessionMismatch(
                f"party {self._peer} was given a different session description (parties or "
                "disclosure settings differ); the session is stopped before any share is sent"
            )
        shared = self._ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(public))
        self._send_aead = ChaCha20Poly1305(self._direction_key(shared, self._me, self._peer))
        self._recv_aead = ChaCha20Poly1305(self._direction_key(shared, self._peer, self._me))

    def _direction_key(self, shared: bytes, sender: int, receiver: int) -> bytes:
        info = b"jointstats relay " + struct.pack("<ii", sender, receiver)
        return HKDF(hashes.SHA256(), 32, salt=self._session, info=info).derive(shared)

    @property
    def ready(self) -> bool:
        return self._send_aead is not None

    def _aad(self, sender: int, receiver: int) -> bytes:
        return self._session + struct.pack("<ii", sender, receiver)

    def seal(self, plaintext: bytes) -> bytes:
        assert self._send_aead is not None, "handshake first"
        nonce = self._send_seq.to_bytes(12, "little")
        self._send_seq += 1
        return self._send_aead.encrypt(nonce, plaintext, self._aad(self._me, self._peer))

    def open(self, ciphertext: bytes) -> bytes:
        if self._recv_aead is None:
            raise PeerError(f"party {self._peer} sent data before its handshake")
        nonce = self._recv_seq.to_bytes(12, "little")
        try:
            plaintext = self._recv_aead.decrypt(nonce, ciphertext, self._aad(self._peer, self._me))
        except InvalidTag:
            raise PeerError(
                f"a frame from party {self._peer} failed authentication (altered, replayed or "
                "out of order); the session is stopped"
            ) from None
        self._recv_seq += 1
        return plaintext

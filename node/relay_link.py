"""MPyC's peer connections, carried over the coordinator's relay and sealed end to end.

MPyC's runtime needs one object per peer with `send(pc, payload)`, `receive(pc)` (a future),
`nbytes_sent` and `close_connection()`. PeerLink is that object; RelayLink owns the one gRPC
Relay stream of this party and demultiplexes frames to the PeerLinks. Messages are sealed
(jointstats.transport.PairSeal) and cut into chunks under gRPC's message limit.

What a peer sent and this party has not read yet (chunks of a message, messages for later MPC
steps, protocol messages in the data queue) is bounded per peer, much lower before that
peer's handshake is accepted; a peer over the bound fails the session with a PeerError.

Messages to a peer are batched: what the session hands over during one turn of the event loop
(MPyC sends one message per peer for every secure operation it starts, and starts many at
once) is sealed as one frame, a sequence of entries [kind (1 byte), length (4 bytes), body].
A batch is flushed when the loop turn ends, when it reaches BATCH_BYTES, and before the link
closes. The seal's sequence-number nonces cover the whole batch, so a relay can no more split,
reorder or drop entries than it could messages; fewer, larger frames mean fewer gRPC writes
at every party and at the coordinator (docs/performance.md).

What this party sends is counted per peer, message kind and session phase (`PeerLink.sent`):
messages, payload bytes (what the protocol or MPyC handed over) and sealed bytes. An entry is
its payload plus 5 header bytes and 8 program-counter bytes (MPC only); each sealed frame adds
a 16-byte Poly1305 tag, counted with its first entry; the relay adds ~40 bytes of frame per
1 MiB chunk, and TLS its own records. The node's audit log records these counts after each
job (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import grpc

from jointstats.errors import PeerError
from jointstats.keys import Identity, Roster
from jointstats.transport import CHUNK_BYTES, PairSeal, channel_credentials, channel_options
from jointstats.v1 import wire_pb2, wire_pb2_grpc

MPC, PRSS, BYE, DATA = 0, 1, 2, 3
KIND_NAMES = {MPC: "MPC", PRSS: "PRSS", BYE: "BYE", DATA: "DATA"}
HANDSHAKE = "HANDSHAKE"  # the signed hello that opens each pair's sealed channel (unsealed)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # one sealed message, reassembled from chunks
MAX_BUFFERED_BYTES = 512 * 1024 * 1024  # received from one peer, not yet read by the session
MAX_EARLY_BYTES = 1024 * 1024  # the same, before the peer's handshake is accepted
BATCH_BYTES = CHUNK_BYTES - 64  # sealed (+ its tag) once it holds this much: one relay frame
ENTRY = struct.Struct("<BI")  # an entry's header in a sealed frame: kind, body length
TAG_BYTES = 16  # ChaCha20-Poly1305's tag, one per sealed frame
# What one held item (an MPC step's payload, a DATA message, an early frame) counts at least
# against the buffer limits: its Python objects cost memory even when its body is empty.
ITEM_BYTES = 64
CLOSE_SECONDS = 5.0


def entry(kind: int, body: bytes) -> bytes:
    """One entry of a sealed frame: kind, body length, body."""
    return ENTRY.pack(kind, len(body)) + body


class _ReadQueue(asyncio.Queue):
    """The data queue: tells its PeerLink when a message is read (it no longer waits)."""

    def __init__(self, on_read: Callable[[int], None]) -> None:
        super().__init__()
        self._on_read = on_read

    def _get(self) -> bytes:  # asyncio.Queue's hook, as in LifoQueue and PriorityQueue
        item = super()._get()
        self._on_read(len(item) + ITEM_BYTES)
        return item


class PeerLink:
    """One peer as MPyC sees it."""

    def __init__(self, link: RelayLink, peer_pid: int, seal: PairSeal) -> None:
        self._link = link
        self.peer_pid = peer_pid
        self.seal = seal
        self.nbytes_sent = 0
        self.sent: dict[
            tuple[str, str], list[int]
        ] = {}  # (kind, phase) -> messages, payload, sealed
        self.buffers: dict[int, object] = {}
        self._batch: list[bytes] = []  # entries waiting to be sealed as one frame
        self._batch_bytes = 0
        self._chunks: list[bytes] = []
        self._chunk_bytes = 0
        self._early: list[bytes] = []  # sealed messages that arrived before we read the handshake
        self._held = 0  # bytes in buffers, data and _early: received, not read yet
        self.handshake: asyncio.Future[bytes] = link.loop.create_future()
        self.prss: asyncio.Future[bytes] = link.loop.create_future()
        self.bye: asyncio.Future[None] = link.loop.create_future()
        self.data: asyncio.Queue[bytes] = _ReadQueue(self._read)  # protocol messages, in order

    def _count(self, kind: str, payload: int, sealed: int) -> None:
        counts = self.sent.setdefault((kind, self._link.phase), [0, 0, 0])
        counts[0] += 1
        counts[1] += payload
        counts[2] += sealed

    def _send_sealed(self, kind: int, body: bytes, payload: int | None = None) -> None:
        """Add an entry to this turn's batch (sealed and sent by `flush`)."""
        if self._batch_bytes and self._batch_bytes + ENTRY.size + len(body) > BATCH_BYTES:
            self.flush()
        if not self._batch:
            self._link.loop.call_soon(self.flush)
        framed = entry(kind, body)
        overhead = 0 if self._batch else TAG_BYTES
        self._batch.append(framed)
        self._batch_bytes += len(framed)
        self.nbytes_sent += len(framed) + overhead
        self._count(
            KIND_NAMES[kind], len(body) if payload is None else payload, len(framed) + overhead
        )

    def flush(self) -> None:
        """Seal the waiting entries as one frame and hand it to the relay stream."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._link.send_message(self.peer_pid, self.seal.seal(b"".join(batch)))

    def send_handshake(self, hello: bytes) -> None:
        self._count(HANDSHAKE, len(hello), len(hello))
        self._link.send_message(self.peer_pid, hello)

    def send(self, pc: int, payload: bytes) -> None:
        self._send_sealed(MPC, struct.pack("<q", pc) + bytes(payload), len(payload))

    def send_prss(self, keys: bytes) -> None:
        self._send_sealed(PRSS, keys)

    def send_data(self, payload: bytes) -> None:
        self._send_sealed(DATA, payload)

    def send_bye(self) -> None:
        self._send_sealed(BYE, b"")

    def receive(self, pc: int) -> object:
        payload = self.buffers.pop(pc, None)
        if payload is None:
            payload = self.buffers[pc] = self._link.loop.create_future()
        elif isinstance(payload, bytes):
            self._read(len(payload) + ITEM_BYTES)
        return payload

    def close_connection(self) -> None:
        """Connections belong to the RelayLink; MPyC's call is a no-op here."""

    def on_chunk(self, data: bytes, final: bool) -> None:
        self._chunks.append(data)
        self._chunk_bytes += len(data)
        if self._chunk_bytes > MAX_MESSAGE_BYTES:
            raise PeerError(f"party {self.peer_pid} sent a message over {MAX_MESSAGE_BYTES} bytes")
        self._check_buffered()
        if not final:
            return
        message, self._chunks, self._chunk_bytes = b"".join(self._chunks), [], 0
        if not self.handshake.done():
            self.handshake.set_result(message)
        elif not self.seal.ready:
            self._early.append(message)
            self._held += len(message) + ITEM_BYTES
        else:
            self._on_sealed(message)
            self._check_buffered()

    def accept_handshake(self, hello: bytes, peer_sign_public: bytes) -> None:
        self.seal.accept_hello(hello, peer_sign_public)
        early, self._early = self._early, []
        for message in early:
            self._held -= len(message) + ITEM_BYTES
            self._on_sealed(message)

    def _read(self, size: int) -> None:
        self._held -= size

    def _check_buffered(self) -> None:
        limit = MAX_BUFFERED_BYTES if self.seal.ready else MAX_EARLY_BYTES
        if self._held + self._chunk_bytes > limit:
            when = "" if self.seal.ready else " before its handshake"
            raise PeerError(
                f"party {self.peer_pid} sent more than this party has read{when}: over "
                f"{limit / (1024 * 1024):g} MiB wait; the session is stopped"
            )

    def _on_sealed(self, message: bytes) -> None:
        plaintext = memoryview(self.seal.open(message))
        if not plaintext:
            raise PeerError(f"party {self.peer_pid} sent an empty message")
        offset = 0
        while offset < len(plaintext):
            if len(plaintext) - offset < ENTRY.size:
                raise PeerError(f"party {self.peer_pid} sent a truncated message")
            kind, size = ENTRY.unpack_from(plaintext, offset)
            offset += ENTRY.size
            if size > len(plaintext) - offset:
                raise PeerError(f"party {self.peer_pid} sent a truncated message")
            self._on_entry(kind, bytes(plaintext[offset : offset + size]))
            offset += size
            self._check_buffered()  # per entry: a frame may hold millions of tiny ones

    def _on_entry(self, kind: int, body: bytes) -> None:
        if kind == MPC:
            if len(body) < 8:
                raise PeerError(f"party {self.peer_pid} sent a truncated MPC message")
            self._deliver(struct.unpack_from("<q", body)[0], body[8:])
        elif kind == PRSS and not self.prss.done():
            self.prss.set_result(body)
        elif kind == DATA:
            self._held += len(body) + ITEM_BYTES
            self.data.put_nowait(body)
        elif kind == BYE and not self.bye.done():
            self.bye.set_result(None)
        else:
            raise PeerError(f"party {self.peer_pid} sent an unexpected message type")

    def _deliver(self, pc: int, payload: bytes) -> None:
        waiting = self.buffers.pop(pc, None)
        if waiting is None:
            self.buffers[pc] = payload
            self._held += len(payload) + ITEM_BYTES
        elif isinstance(waiting, asyncio.Future):
            waiting.set_result(payload)
        else:
            raise PeerError(f"party {self.peer_pid} sent two messages for one step")


class RelayLink:
    """This party's Relay stream to the coordinator, shared by all its PeerLinks."""

    def __init__(
        self,
        address: str,
        identity: Identity,
        roster: Roster,
        session_id: str,
        pid: int,
        channel: grpc.aio.Channel | None = None,
        session_digest: bytes = bytes(32),
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.session_digest = session_digest  # bound into every pair's signed handshake
        self._address, self._identity, self._roster = address, identity, roster
        self.session_id, self.pid = session_id, pid
        self._outbox: asyncio.Queue[wire_pb2.RelayFrame | None] = asyncio.Queue()
        self.peers: dict[int, PeerLink] = {}
        self.failed: asyncio.Future[None] = self.loop.create_future()
        self._channel: grpc.aio.Channel | None = channel
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.phase = "connect"  # the session phase, for the counts of what was sent

    def sent(self, parties: list[str]) -> list[dict[str, int | str]]:
        """What this party sent, per peer (by name), kind and phase, in a stable order."""
        return [
            {"to": parties[pid], "kind": kind, "phase": phase, "messages": m, "payload_bytes": p,
             "bytes": b}
            for pid, peer in sorted(self.peers.items())
            for (kind, phase), (m, p, b) in sorted(peer.sent.items())
        ]  # fmt: skip

    def flush(self) -> None:
        """Send every peer's waiting batch now (before closing; tests)."""
        for peer in self.peers.values():
            peer.flush()

    def add_peer(self, peer_pid: int) -> PeerLink:
        link = PeerLink(
            self, peer_pid, PairSeal(self.session_id, self.pid, peer_pid, self.session_digest)
        )
        self.peers[peer_pid] = link
        return link

    def send_message(self, to_pid: int, message: bytes) -> None:
        for start in range(0, max(len(message), 1), CHUNK_BYTES):
            chunk = message[start : start + CHUNK_BYTES]
            final = start + CHUNK_BYTES >= len(message)
            self._outbox.put_nowait(
                wire_pb2.RelayFrame(
                    session_id=self.session_id, to_pid=to_pid, data=chunk, final=final
                )
            )

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            await call.write(
                wire_pb2.RelayFrame(session_id=self.session_id, from_pid=self.pid, to_pid=-1)
            )
            while (frame := await self._outbox.get()) is not None:
                await call.write(frame)
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            self._fail(PeerError(f"relay stream broke: {exc.details() or exc.code().name}"))

    async def open(self) -> None:
        if self._channel is None:
            self._channel = grpc.aio.secure_channel(
                self._address,
                channel_credentials(self._identity, self._roster),
                options=channel_options(),
            )
        call = wire_pb2_grpc.CoordinatorStub(self._channel).Relay()
        self._writer = asyncio.create_task(self._write(call))
        self._reader = asyncio.create_task(self._read(call))

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for frame in call:
                peer = self.peers.get(frame.from_pid)
                if peer is None:
                    raise PeerError(f"relay delivered a frame from unknown party {frame.from_pid}")
                peer.on_chunk(frame.data, frame.final)
            if not self._closing:
                raise PeerError("the coordinator closed the relay stream")
        except grpc.aio.AioRpcError as exc:
            self._fail(PeerError(f"relay stream broke: {exc.details() or exc.code().name}"))
        except Exception as exc:  # any bad frame ends the session, never the node
            self._fail(exc if isinstance(exc, PeerError) else PeerError(f"bad relay frame: {exc}"))

    def _fail(self, error: Exception) -> None:
        if not self.failed.done():
            self.failed.set_exception(error)

    async def close(self) -> None:
        """Half-close our side, then wait until the coordinator has relayed all we sent
        (it ends our response stream once it has read our last frame)."""
        self._closing = True
        self.flush()
        self._outbox.put_nowait(None)
        tasks = [t for t in (self._writer, self._reader) if t is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_SECONDS)
            for task in pending:
                task.cancel()
        if self._channel is not None:
            await self._channel.close(grace=1.0)

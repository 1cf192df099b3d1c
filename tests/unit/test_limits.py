"""Memory a hostile peer can make a party or the coordinator hold is bounded: declared array
shapes, messages a party has not read yet, and frames waiting at the relay."""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from jointstats.coordinator import relay
from jointstats.errors import AuthError, JobError, PeerError
from jointstats.keys import Identity, new_member
from jointstats.node import relay_link
from jointstats.node.relay_link import MPC, PeerLink, entry
from jointstats.protocols.linked import wire
from jointstats.protocols.linked.records import MAX_RECORDS
from jointstats.transport import PairSeal
from jointstats.v1 import wire_pb2

MIB = 1024 * 1024


class _Peer:
    """A PartyChannel whose peer sends `messages`, then vanishes."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages

    def send(self, pid: int, payload: bytes) -> None:
        pass

    async def recv(self, pid: int) -> bytes:
        if not self.messages:
            raise PeerError("the peer vanished")
        return self.messages.pop(0)


def _header(rows: int, width: int, itemsize: int) -> bytes:
    return wire._HEADER.pack(b"ARR1", itemsize, rows, width)


def test_a_declared_array_shape_takes_no_memory_before_the_data_arrives() -> None:
    # H's view of a holder's tags: any number of rows up to MAX_RECORDS may be legitimate
    header = _header(MAX_RECORDS, wire.TAG_BYTES, 1)
    peer = _Peer([header, bytes(wire.TAG_BYTES * 1000)])
    tracemalloc.start()
    try:
        with pytest.raises(PeerError, match="vanished"):
            asyncio.run(wire.recv_array(peer, 1, np.uint8, wire.TAG_BYTES, MAX_RECORDS))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB  # not the 32 GiB the header declared


def test_an_array_larger_than_expected_is_refused_from_its_header() -> None:
    header = _header(11, 3, 8)
    with pytest.raises(PeerError, match="11 rows; at most 10 expected"):
        asyncio.run(wire.recv_array(_Peer([header]), 1, np.uint64, 3, 10))
    with pytest.raises(PeerError, match="wrong type or width"):
        asyncio.run(wire.recv_array(_Peer([_header(1, 4, 8)]), 1, np.uint64, 3, 10))
    rows = np.arange(12, dtype=np.uint64).reshape(4, 3)
    got = asyncio.run(
        wire.recv_array(_Peer([_header(4, 3, 8), rows.tobytes()]), 1, np.uint64, 3, 10)
    )
    assert (got == rows).all()
    empty = asyncio.run(wire.recv_array(_Peer([_header(0, 3, 8)]), 1, np.uint64, 3, 10))
    assert empty.shape == (0, 3)


class _Link:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def send_message(self, to_pid: int, message: bytes) -> None:
        pass


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("k")
    a, b = new_member(root / "a", "a", "node"), new_member(root / "b", "b", "node")
    return Identity.load(root / "a"), Identity.load(root / "b"), a.sign_public, b.sign_public


def _pair(keys) -> tuple[PeerLink, PairSeal]:
    """Our PeerLink for party 1, and party 1's seal to send with; handshake not yet accepted."""
    id_a, id_b, pub_a, _ = keys
    receiver = PeerLink(_Link(), 1, PairSeal("s", 0, 1))  # type: ignore[arg-type]
    sender = PairSeal("s", 1, 0)
    receiver.on_chunk(sender.hello(id_b), True)
    sender.accept_hello(receiver.seal.hello(id_a), pub_a)
    return receiver, sender


def _mpc(sender: PairSeal, pc: int, size: int) -> bytes:
    return sender.seal(entry(MPC, struct.pack("<q", pc) + bytes(size)))


def test_unread_messages_of_a_peer_are_bounded(keys, monkeypatch) -> None:
    monkeypatch.setattr(relay_link, "MAX_BUFFERED_BYTES", 4 * MIB, raising=False)
    receiver, sender = _pair(keys)
    receiver.accept_handshake(receiver.handshake.result(), keys[3])
    for pc in range(3):  # MPC messages for steps the runtime has not reached
        receiver.on_chunk(_mpc(sender, pc, MIB), True)
    receiver.on_chunk(sender.seal(entry(relay_link.DATA, bytes(MIB // 2))), True)
    assert len(receiver.receive(0)) == MIB  # read: it no longer counts
    assert len(receiver.data.get_nowait()) == MIB // 2
    receiver.on_chunk(_mpc(sender, 3, MIB), True)
    receiver.on_chunk(_mpc(sender, 4, MIB // 2), True)  # 3.5 MiB wait: still fine
    with pytest.raises(PeerError, match="over 4 MiB wait"):
        receiver.on_chunk(_mpc(sender, 5, MIB), True)


def test_data_a_party_does_not_read_is_bounded(keys, monkeypatch) -> None:
    monkeypatch.setattr(relay_link, "MAX_BUFFERED_BYTES", 2 * MIB, raising=False)
    receiver, sender = _pair(keys)
    receiver.accept_handshake(receiver.handshake.result(), keys[3])
    with pytest.raises(PeerError, match="over 2 MiB wait"):
        for _ in range(5):
            receiver.on_chunk(sender.seal(entry(relay_link.DATA, bytes(MIB))), True)


def test_before_its_handshake_is_accepted_a_peer_can_leave_little(keys) -> None:
    receiver, sender = _pair(keys)
    with pytest.raises(PeerError, match="before its handshake"):
        for pc in range(4):  # sealed messages waiting for the handshake to be accepted
            receiver.on_chunk(_mpc(sender, pc, MIB // 2), True)
    receiver, _ = _pair(keys)
    with pytest.raises(PeerError, match="before its handshake"):
        for _ in range(4):  # or chunks of one endless message
            receiver.on_chunk(bytes(MIB // 2), False)


def test_messages_that_arrived_early_are_delivered_after_the_handshake(keys) -> None:
    receiver, sender = _pair(keys)
    receiver.on_chunk(_mpc(sender, 7, 100), True)
    receiver.accept_handshake(receiver.handshake.result(), keys[3])
    assert len(receiver.receive(7)) == 100


def _frame(session: str, to_pid: int, size: int) -> wire_pb2.RelayFrame:
    return wire_pb2.RelayFrame(session_id=session, to_pid=to_pid, data=bytes(size))


def test_the_relay_bounds_the_backlog_per_party_and_across_sessions(monkeypatch) -> None:
    monkeypatch.setattr(relay, "MAX_BACKLOG_BYTES", 3 * MIB)
    monkeypatch.setattr(relay, "MAX_RELAY_BACKLOG_BYTES", 5 * MIB, raising=False)
    hub = relay.Relay()
    parties = ("unhcr", "drc", "nrc")
    sessions = []
    for k in range(3):
        hub.open(f"s{k}", f"job{k}", parties)
        sessions.append(hub.join(wire_pb2.RelayFrame(session_id=f"s{k}", from_pid=0), "unhcr")[0])
    s0, s1, s2 = sessions
    for _ in range(3):
        hub.route(s0, 0, _frame("s0", 1, MIB))
    with pytest.raises(JobError, match="drc is not reading .* over 3 MiB"):
        hub.route(s0, 0, _frame("s0", 1, MIB))
    hub.route(s1, 0, _frame("s1", 2, MIB))
    hub.route(s1, 0, _frame("s1", 2, MIB))
    with pytest.raises(JobError, match="relay is full: over 5 MiB"):  # all sessions count
        hub.route(s2, 0, _frame("s2", 1, MIB))
    frame = s0.inbox(1).get_nowait()
    hub.delivered(s0, 1, frame)  # read by its party: room again
    hub.route(s2, 0, _frame("s2", 1, MIB))
    with pytest.raises(JobError, match="relay is full"):
        hub.route(s2, 0, _frame("s2", 1, MIB))
    hub.close("s0")  # an ended session's backlog is dropped and no longer counts
    assert hub.limits.queued == 3 * MIB
    hub.delivered(s0, 1, s0.inbox(1).get_nowait())  # late deliveries of a closed one: ignored
    assert hub.limits.queued == 3 * MIB
    hub.route(s0, 0, _frame("s0", 1, MIB))  # frames for an ended session are dropped
    for _ in range(2):
        hub.route(s2, 0, _frame("s2", 2, MIB))
    assert hub.limits.queued == 5 * MIB
    with pytest.raises(AuthError, match="another session"):
        hub.route(s2, 0, _frame("s1", 2, 1))


def test_relay_bounds_are_sane_by_default() -> None:
    assert relay.MAX_BACKLOG_BYTES <= 256 * MIB
    assert relay.MAX_BACKLOG_BYTES < relay.MAX_RELAY_BACKLOG_BYTES <= 2048 * MIB
    assert relay_link.MAX_EARLY_BYTES < relay_link.MAX_BUFFERED_BYTES <= 512 * MIB


def test_many_tiny_entries_count_against_the_buffer_limit(keys, monkeypatch) -> None:
    """A hostile peer sends frames of empty DATA entries and MPC entries with empty payloads for
    steps the runtime has not reached: 5-13 bytes on the wire each, a Python object each at
    the receiver. Every held item counts at least ITEM_BYTES, so the limit still binds."""
    monkeypatch.setattr(relay_link, "MAX_BUFFERED_BYTES", 64 * 1024, raising=False)
    receiver, sender = _pair(keys)
    receiver.accept_handshake(receiver.handshake.result(), keys[3])
    empty_data = entry(relay_link.DATA, b"") * 1000
    empty_mpc = b"".join(entry(MPC, struct.pack("<q", pc)) for pc in range(100_000))
    with pytest.raises(PeerError, match="over 0.0625 MiB wait"):
        for _ in range(20):
            receiver.on_chunk(sender.seal(empty_data), True)
    receiver, sender = _pair(keys)
    receiver.accept_handshake(receiver.handshake.result(), keys[3])
    with pytest.raises(PeerError, match="over 0.0625 MiB wait"):
        receiver.on_chunk(sender.seal(empty_mpc), True)
    assert len(receiver.buffers) < 64 * 1024 // relay_link.ITEM_BYTES + 2

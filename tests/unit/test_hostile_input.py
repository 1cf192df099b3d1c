"""Fuzzing what arrives from outside: relay frames, offered jobs, dataset files."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointstats.errors import AuthError, DataError, JointstatsError, PeerError
from jointstats.keys import Identity, new_member
from jointstats.node.relay_link import PeerLink
from jointstats.node.sources import FileSource
from jointstats.transport import PairSeal


class _Link:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sent: list[tuple[int, bytes]] = []

    def send_message(self, to_pid: int, message: bytes) -> None:
        self.sent.append((to_pid, message))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("k")
    a, b = new_member(root / "a", "a", "node"), new_member(root / "b", "b", "node")
    return Identity.load(root / "a"), Identity.load(root / "b"), a.sign_public, b.sign_public


def _linked_pair(keys) -> tuple[PeerLink, PairSeal]:
    id_a, id_b, pub_a, pub_b = keys
    receiver = PeerLink(_Link(), 1, PairSeal("s", 0, 1))  # type: ignore[arg-type]
    sender = PairSeal("s", 1, 0)
    receiver.on_chunk(sender.hello(id_b), True)
    receiver.accept_handshake(receiver.handshake.result(), pub_b)
    sender.accept_hello(receiver.seal.hello(id_a), pub_a)
    return receiver, sender


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=st.lists(st.tuples(st.binary(max_size=200), st.booleans()), max_size=6))
def test_garbage_frames_only_ever_raise_peer_error(keys, chunks) -> None:
    receiver, _ = _linked_pair(keys)
    for data, final in chunks:
        try:
            receiver.on_chunk(data, final)
        except PeerError:
            return


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=64))
def test_authentic_but_malformed_messages_only_raise_peer_error(keys, body) -> None:
    receiver, sender = _linked_pair(keys)
    with contextlib.suppress(PeerError):
        receiver.on_chunk(sender.seal(body), True)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hello=st.binary(max_size=120))
def test_garbage_handshakes_are_refused(keys, hello) -> None:
    _, _, _, pub_b = keys
    with pytest.raises((PeerError, AuthError)):
        PairSeal("s", 0, 1).accept_hello(hello, pub_b)


def test_an_oversized_message_is_refused(keys, monkeypatch) -> None:
    from jointstats.node import relay_link

    monkeypatch.setattr(relay_link, "MAX_MESSAGE_BYTES", 1000)
    receiver, _ = _linked_pair(keys)
    with pytest.raises(PeerError, match="over 1000 bytes"):
        for _ in range(20):
            receiver.on_chunk(b"x" * 100, False)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=300))
def test_any_file_content_gives_rows_or_a_value_free_data_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "households.csv"
    path.write_bytes(b"region,displacement_status\n" + content)
    source = FileSource("households", path)
    try:
        source.grouped(["region", "displacement_status"])
    except DataError as error:
        assert "\n" not in str(error)
        text = content.decode("utf-8", errors="ignore").strip()
        if len(text) >= 8:
            assert text not in str(error)
    except JointstatsError:
        pytest.fail("only DataError is expected from a dataset reader")


class _Wire:
    """A fake RelayLink that keeps what its PeerLink hands over (one entry per sealed frame)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.frames: list[bytes] = []
        self.phase = "mpc"

    def send_message(self, to_pid: int, message: bytes) -> None:
        self.frames.append(message)


def _sending_pair(keys) -> tuple[PeerLink, PeerLink, _Wire]:
    """Party 0's link to party 1 (sending through a _Wire) and party 1's link to party 0."""
    id_a, id_b, pub_a, pub_b = keys
    wire = _Wire()
    sender = PeerLink(wire, 1, PairSeal("s", 0, 1))  # type: ignore[arg-type]
    receiver = PeerLink(_Link(), 0, PairSeal("s", 1, 0))  # type: ignore[arg-type]
    receiver.on_chunk(sender.seal.hello(id_a), True)
    receiver.accept_handshake(receiver.handshake.result(), pub_a)
    sender.on_chunk(receiver.seal.hello(id_b), True)
    sender.accept_handshake(sender.handshake.result(), pub_b)
    return sender, receiver, wire


def test_what_one_loop_turn_sends_arrives_as_one_frame_in_order(keys) -> None:
    sender, receiver, wire = _sending_pair(keys)
    for pc in range(50):
        sender.send(pc, pc.to_bytes(2, "little") * 10)
    sender.send_data(b"protocol message")
    sender.send_bye()
    assert wire.frames == []  # nothing leaves before the turn ends
    wire.loop.run_until_complete(asyncio.sleep(0))
    assert len(wire.frames) == 1
    receiver.on_chunk(wire.frames[0], True)
    assert [receiver.receive(pc) for pc in range(50)] == [
        pc.to_bytes(2, "little") * 10 for pc in range(50)
    ]
    assert receiver.data.get_nowait() == b"protocol message"
    assert receiver.bye.done()
    sent = sender.sent[("MPC", "mpc")]
    assert sent[0] == 50 and sent[1] == 50 * 20
    assert sum(counts[2] for counts in sender.sent.values()) == len(wire.frames[0])


def test_a_batch_reaching_its_size_limit_is_sealed_at_once(keys, monkeypatch) -> None:
    from jointstats.node import relay_link

    monkeypatch.setattr(relay_link, "BATCH_BYTES", 1000)
    sender, receiver, wire = _sending_pair(keys)
    for _ in range(5):
        sender.send_data(bytes(400))
    assert len(wire.frames) == 2  # 2 + 2 entries sealed; the fifth waits for the turn's end
    sender.flush()
    for frame in wire.frames:
        receiver.on_chunk(frame, True)
    assert [len(receiver.data.get_nowait()) for _ in range(5)] == [400] * 5


@pytest.mark.parametrize(
    "plaintext",
    [
        b"\x03\xff\xff\xff\x7fshort",  # an entry longer than the frame
        b"\x03\x05\x00\x00\x00hello\x03\x01",  # a header cut off after a whole entry
        b"\x00\x04\x00\x00\x00abcd",  # an MPC entry without its 8-byte program counter
        b"\x09\x00\x00\x00\x00",  # an unknown kind
    ],
)
def test_an_authentic_frame_with_bad_entries_stops_the_session(keys, plaintext) -> None:
    """A hostile peer (not the coordinator: it cannot seal) frames entries that do not add up:
    the session stops with a PeerError, never an IndexError or a misread message."""
    receiver, sender = _linked_pair(keys)
    with pytest.raises(PeerError, match="truncated|unexpected"):
        receiver.on_chunk(sender.seal(plaintext), True)

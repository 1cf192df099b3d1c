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

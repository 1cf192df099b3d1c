"""End-to-end sealing between two parties: authentic, confidential, in order, once."""

from __future__ import annotations

from pathlib import Path

import pytest

from jointstats.errors import AuthError, PeerError
from jointstats.keys import Identity, new_member
from jointstats.transport import PairSeal


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Identity, bytes, bytes]:
    root: Path = tmp_path_factory.mktemp("keys")
    a = new_member(root / "a", "a", "node")
    b = new_member(root / "b", "b", "node")
    return Identity.load(root / "a"), Identity.load(root / "b"), a.sign_public, b.sign_public


def _connected(pair) -> tuple[PairSeal, PairSeal]:
    id_a, id_b, pub_a, pub_b = pair
    a, b = PairSeal("s1", 0, 1), PairSeal("s1", 1, 0)
    hello_a, hello_b = a.hello(id_a), b.hello(id_b)
    a.accept_hello(hello_b, pub_b)
    b.accept_hello(hello_a, pub_a)
    return a, b


def test_messages_round_trip_and_are_not_plaintext(pair) -> None:
    a, b = _connected(pair)
    for text in (b"first", b"second" * 1000, b""):
        sealed = a.seal(text)
        assert text not in sealed or not text
        assert b.open(sealed) == text


@pytest.mark.parametrize("attack", ["flip", "replay", "reorder"])
def test_altered_replayed_or_reordered_frames_fail(pair, attack: str) -> None:
    a, b = _connected(pair)
    first, second = a.seal(b"one"), a.seal(b"two")
    if attack == "flip":
        broken = bytearray(first)
        broken[3] ^= 1
        with pytest.raises(PeerError, match="failed authentication"):
            b.open(bytes(broken))
    elif attack == "replay":
        b.open(first)
        with pytest.raises(PeerError):
            b.open(first)
    else:
        with pytest.raises(PeerError):
            b.open(second)


def test_a_handshake_not_signed_by_the_roster_key_is_refused(pair) -> None:
    id_a, id_b, pub_a, _ = pair
    a, b = PairSeal("s1", 0, 1), PairSeal("s1", 1, 0)
    with pytest.raises(AuthError):
        a.accept_hello(b.hello(id_b), pub_a)  # b's hello checked against a's key


def test_keys_differ_per_session(pair) -> None:
    id_a, id_b, pub_a, pub_b = pair
    a, b = PairSeal("s1", 0, 1), PairSeal("s2", 1, 0)
    with pytest.raises(AuthError):
        a.accept_hello(b.hello(id_b), pub_b)  # signed for session s2, not s1

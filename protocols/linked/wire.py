"""Building blocks of the linked crosstab: key agreement, keyed tags, PRG, arrays in chunks.

All arithmetic on shares is in the ring Z_2^64 (numpy uint64 wraps around), so that a uniform
64-bit mask hides a value perfectly and products of share matrices are plain numpy matmuls.
Arrays travel as raw little-endian bytes with a fixed-size header that the receiver checks
against the shape it expects: nothing received is ever unpickled or evaluated.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jointstats.errors import PeerError
from jointstats.protocols.base import PartyChannel

TAG_BYTES = 16
MESSAGE_BYTES = 4 * 1024 * 1024  # one channel message (the relay cuts it into 1 MiB frames)
_HEADER = struct.Struct("<4sBQQ")  # magic, dtype code, rows, row width
_DTYPES = {1: np.dtype(np.uint8), 4: np.dtype("<u4"), 8: np.dtype("<u8")}  # code = item size
_KDF_INFO = b"jointstats linked_crosstab v1 "


@dataclass(frozen=True)
class PairKeys:
    """Secrets that the two data holders share for one job (never seen by H or the relay)."""

    tag: bytes  # BLAKE2b key for the tags
    left_stream: bytes  # PRG seed for the {A, B} share of U (left's one-hot matrix)
    right_stream: bytes  # PRG seed for the {A, B} share of V (right's one-hot matrix)
    zero: bytes  # PRG seed for the {A, B} terms of zero sharings


async def agree_keys(channel: PartyChannel, me: int, peer: int) -> PairKeys:
    """Ephemeral X25519 over the sealed, authenticated party channel; HKDF-SHA256 over the
    shared secret with both public keys (in party-id order) as context."""
    private = X25519PrivateKey.generate()
    mine = private.public_key().public_bytes_raw()
    channel.send(peer, mine)
    theirs = await channel.recv(peer)
    if len(theirs) != 32:
        raise PeerError(f"party {peer} sent a malformed key share")
    shared = private.exchange(X25519PublicKey.from_public_bytes(theirs))
    context = mine + theirs if me < peer else theirs + mine
    material = HKDF(hashes.SHA256(), 128, salt=None, info=_KDF_INFO + context).derive(shared)
    return PairKeys(*(material[k : k + 32] for k in range(0, 128, 32)))


def tags(keys: pa.Array, key: bytes) -> np.ndarray:
    """16-byte keyed BLAKE2b of each key's UTF-8 bytes, as an (n, 16) uint8 array."""
    n = len(keys)
    if not n:
        return np.zeros((0, TAG_BYTES), dtype=np.uint8)
    binary = keys.cast(pa.large_binary())
    offsets = np.frombuffer(binary.buffers()[1], dtype=np.int64)
    bounds = offsets[binary.offset : binary.offset + n + 1].tolist()
    data = binary.buffers()[2].to_pybytes()
    copy = hashlib.blake2b(key=key, digest_size=TAG_BYTES).copy

    def tag(start: int, stop: int) -> bytes:
        h = copy()
        h.update(data[start:stop])
        return h.digest()

    joined = b"".join([tag(s, e) for s, e in zip(bounds[:-1], bounds[1:], strict=True)])
    return np.frombuffer(joined, dtype=np.uint8).reshape(n, TAG_BYTES)


def prg(seed: bytes, label: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform uint64 array from ChaCha20 keyed by `seed`; `label` separates the streams."""
    count = int(np.prod(shape))
    nonce = bytes(4) + hashlib.sha256(label).digest()[:12]  # 32-bit block counter starts at 0
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * count)), dtype="<u8").reshape(shape)


async def send_array(channel: PartyChannel, pid: int, array: np.ndarray) -> None:
    """A 2-D array as a header and row blocks of at most MESSAGE_BYTES each."""
    rows, width = array.shape
    dtype = _DTYPES[array.dtype.itemsize]
    assert array.dtype.kind == "u", "only unsigned integer arrays travel"
    channel.send(pid, _HEADER.pack(b"ARR1", dtype.itemsize, rows, width))
    per_message = max(1, MESSAGE_BYTES // max(1, width * array.dtype.itemsize))
    for start in range(0, rows, per_message):
        block = np.ascontiguousarray(array[start : start + per_message], dtype=dtype)
        channel.send(pid, block.tobytes())
        await asyncio.sleep(0)  # let the relay writer run between blocks


async def recv_array(
    channel: PartyChannel, pid: int, dtype: np.dtype | type, width: int, max_rows: int
) -> np.ndarray:
    """Receive what send_array sent: a `dtype` array of exactly `width` columns and at most
    `max_rows` rows, the shape the caller expects from the session (its own record count, n,
    the job's domains). A header that declares anything else is refused before any memory is
    taken, and memory grows only with the bytes that arrive, never with a declared size."""
    header = await channel.recv(pid)
    expected = _DTYPES[np.dtype(dtype).itemsize]
    if len(header) != _HEADER.size:
        raise PeerError(f"party {pid} sent a malformed array header")
    magic, code, rows, got_width = _HEADER.unpack(header)
    if magic != b"ARR1" or _DTYPES.get(code) != expected or got_width != width:
        raise PeerError(f"party {pid} sent an array of the wrong type or width")
    if rows > max_rows:
        raise PeerError(f"party {pid} sent {rows} rows; at most {max_rows} expected")
    total, row_bytes = rows * width * expected.itemsize, width * expected.itemsize
    data = bytearray()  # grows (realloc, no copy on Linux) as blocks arrive
    while len(data) < total:
        block = await channel.recv(pid)
        if not block or len(block) % row_bytes or len(data) + len(block) > total:
            raise PeerError(f"party {pid} sent an array block of the wrong size")
        data += block
    return np.frombuffer(data, dtype=expected).reshape(rows, width)


def masked_one_hot(
    cells: np.ndarray, width: int, mask: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """One-hot rows of `cells` (plus a weighted copy when weights are given) minus `mask`."""
    out = np.uint64(0) - mask
    rows = np.arange(len(cells))
    out[rows, cells] += np.uint64(1)
    if weights is not None:
        out[rows, width + cells] += weights
    return out


def match(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j) with left[i] == right[j] for two lists of distinct 16-byte tags."""
    import pandas as pd

    lw, rw = left.view("<u8"), right.view("<u8")
    index = pd.Index(rw[:, 0])
    if index.is_unique and pd.Index(lw[:, 0]).is_unique:
        found = index.get_indexer(lw[:, 0])
        i = np.flatnonzero(found >= 0)
        j = found[i]
        same = lw[i, 1] == rw[j, 1]  # a 64-bit prefix match must also match in full
        return i[same], j[same]
    positions = {bytes(t): k for k, t in enumerate(right)}  # (never in practice) exact path
    pairs = [(k, positions[bytes(t)]) for k, t in enumerate(left) if bytes(t) in positions]
    i = np.array([p[0] for p in pairs], dtype=np.int64)
    return i, np.array([p[1] for p in pairs], dtype=np.int64)

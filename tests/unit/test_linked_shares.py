"""Linked crosstab building blocks, in one process: the three parties' share arithmetic over an
in-memory channel adds up to the plaintext table; tags, PRG, arrays and the join."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pyarrow as pa
import pytest

from jointstats.errors import PeerError
from jointstats.protocols import parse_job
from jointstats.protocols.base import SessionContext
from jointstats.protocols.linked import program, wire
from jointstats.protocols.linked.records import WEIGHT_SCALE, Records

PARTIES = ("ministry", "survey", "jips")


def linked_job(weight: bool = False) -> dict:
    right = {"node": "survey", "dataset": "household_survey", "key": "id", "by": ["emp"]}
    if weight:
        right["weight"] = "weight"
    return {
        "kind": "linked_crosstab",
        "helper": "jips",
        "left": {"node": "ministry", "dataset": "idp_registry", "key": "id", "by": ["d", "s"]},
        "right": right,
        "domains": {"d": ["d1", "d2", "d3"], "s": ["f", "m"], "emp": ["e", "u", "i", "x"]},
        "disclosure": {"min_cell": 1},
    }


class MemoryChannel:
    def __init__(self, me: int, queues: dict[tuple[int, int], asyncio.Queue]) -> None:
        self.me, self.queues = me, queues

    def send(self, pid: int, payload: bytes) -> None:
        self.queues[(self.me, pid)].put_nowait(bytes(payload))

    async def recv(self, pid: int) -> bytes:
        return await self.queues[(pid, self.me)].get()


def _records(keys: list[str], cells: np.ndarray, weights: np.ndarray | None) -> Records:
    return Records(pa.array(keys, type=pa.string()), cells.astype(np.int64), weights, 0.0)


async def _shares(job, left: Records, right: Records):
    queues = {(a, b): asyncio.Queue() for a in range(3) for b in range(3) if a != b}
    ctxs = [
        SessionContext(None, pid, PARTIES, PARTIES[:2], 1, channel=MemoryChannel(pid, queues))
        for pid in range(3)
    ]
    roles = [program.Roles.of(job, ctx) for ctx in ctxs]
    return await asyncio.gather(
        program.holder(job, ctxs[0], roles[0], left),
        program.holder(job, ctxs[1], roles[1], right),
        program.helper(job, ctxs[2], roles[2]),
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_partial_products_add_up_to_the_linked_table(weighted: bool) -> None:
    rng = np.random.default_rng(1)
    _, job = parse_job(linked_job(weighted))
    ids = [f"P{i}" for i in range(400)]
    left_ids, right_ids = ids[:300], ids[150:]  # 150 shared
    left_cells = rng.integers(0, 6, len(left_ids))
    right_cells = rng.integers(0, 4, len(right_ids))
    weights = rng.integers(0, 5 * WEIGHT_SCALE, len(right_ids)).astype(np.uint64)
    left = _records(left_ids, left_cells, None)
    right = _records(right_ids, right_cells, weights if weighted else None)
    results = asyncio.run(_shares(job, left, right))
    assert [r.n for r in results] == [150, 150, 150]
    partials = [
        program.partial_product(role, r.u, r.v)
        + program.zero_share(role, r.seeds, (6, 8 if weighted else 4))
        for role, r in zip(("A", "B", "H"), results, strict=True)
    ]
    total = partials[0] + partials[1] + partials[2]  # wraps mod 2^64
    expected = np.zeros((6, 8 if weighted else 4), dtype=np.uint64)
    position = {k: p for p, k in enumerate(right_ids)}
    for key, cell in zip(left_ids, left_cells, strict=True):
        if key in position:
            expected[cell, right_cells[position[key]]] += 1
            if weighted:
                expected[cell, 4 + right_cells[position[key]]] += weights[position[key]]
    assert (total == expected).all()
    assert not (partials[0] == expected).all()  # one party's part alone is not the table


def test_no_overlap_gives_an_empty_match_and_a_zero_table() -> None:
    _, job = parse_job(linked_job())
    left = _records(["a", "b"], np.array([0, 1]), None)
    right = _records(["c"], np.array([2]), None)
    results = asyncio.run(_shares(job, left, right))
    assert [r.n for r in results] == [0, 0, 0]
    total = sum(
        program.partial_product(role, r.u, r.v) for role, r in zip("ABH", results, strict=True)
    )
    assert total.shape == (6, 4) and not total.any()


def test_every_share_a_party_receives_looks_uniform() -> None:
    """The i/j lists aside, what travels is masked: no one-hot zeros/ones in the clear."""
    _, job = parse_job(linked_job())
    ids = [f"P{i}" for i in range(2000)]
    left = _records(ids, np.zeros(2000), None)
    right = _records(ids, np.zeros(2000), None)
    parties = asyncio.run(_shares(job, left, right))
    for share in [s for p in parties for s in [*p.u.values(), *p.v.values()]]:
        assert np.count_nonzero(share <= 1) < 5  # uniform 64-bit values are almost never 0/1


def test_partial_product_wraps_mod_2_64() -> None:
    rng = np.random.default_rng(2)
    u = {k: rng.integers(0, 2**64, (50, 3), dtype=np.uint64) for k in ("AH", "AB")}
    v = {k: rng.integers(0, 2**64, (50, 2), dtype=np.uint64) for k in ("AH", "AB")}
    got = program.partial_product("A", u, v)
    for r, c in itertools.product(range(3), range(2)):
        want = sum(
            int(u[a][k, r]) * int(v[b][k, c])
            for k in range(50)
            for a, b in (("AH", "AH"), ("AH", "AB"), ("AB", "AH"))
        )
        assert int(got[r, c]) == want % 2**64


def test_tags_depend_on_the_key_and_the_bytes() -> None:
    keys = pa.array(["a", "b", "a", "é"])
    t1, t2 = wire.tags(keys, b"k" * 32), wire.tags(keys, b"j" * 32)
    assert t1.shape == (4, 16) and (t1[0] == t1[2]).all() and not (t1[0] == t1[1]).all()
    assert not (t1 == t2).all(axis=1).any()
    assert wire.tags(pa.array([], type=pa.string()), b"k" * 32).shape == (0, 16)
    assert (wire.tags(keys.slice(1), b"k" * 32) == t1[1:]).all()


def test_prg_streams_are_separate_and_reproducible() -> None:
    seed = bytes(range(32))
    a, b = wire.prg(seed, b"mask", (1000, 3)), wire.prg(seed, b"rss", (1000, 3))
    assert (a == wire.prg(seed, b"mask", (1000, 3))).all()
    assert np.count_nonzero(a == b) == 0


def test_match_finds_the_shared_tags() -> None:
    rng = np.random.default_rng(3)
    shared = rng.integers(0, 256, (100, 16), dtype=np.uint8)
    left = np.concatenate([shared, rng.integers(0, 256, (50, 16), dtype=np.uint8)])
    right = np.concatenate([rng.integers(0, 256, (70, 16), dtype=np.uint8), shared[::-1]])
    i, j = wire.match(left, right)
    assert len(i) == 100 and (left[i] == right[j]).all()
    twice = np.concatenate([right, right[:1]])  # duplicate 64-bit prefixes: the exact path
    i2, j2 = wire.match(left, twice)
    assert sorted(i2.tolist()) == sorted(i.tolist()) and (left[i2] == twice[j2]).all()


def test_arrays_travel_in_blocks_and_bad_headers_are_refused(monkeypatch) -> None:
    monkeypatch.setattr(wire, "MESSAGE_BYTES", 64)
    array = np.arange(60, dtype=np.uint64).reshape(20, 3)

    async def roundtrip(width: int, max_rows: int) -> np.ndarray:
        queues = {(a, b): asyncio.Queue() for a in range(2) for b in range(2) if a != b}
        await wire.send_array(MemoryChannel(0, queues), 1, array)
        assert queues[(0, 1)].qsize() == 1 + 10  # header + 20 rows of 24 bytes, 2 per block
        return await wire.recv_array(MemoryChannel(1, queues), 0, np.uint64, width, max_rows)

    assert (asyncio.run(roundtrip(3, 100)) == array).all()
    with pytest.raises(PeerError, match="wrong type or width"):
        asyncio.run(roundtrip(4, 100))
    with pytest.raises(PeerError, match="at most 10"):
        asyncio.run(roundtrip(3, 10))

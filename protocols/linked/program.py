"""The linked crosstab's MPC program for its three parties A (left), B (right), H (helper).

Notation as in DESIGN §5.2 and docs/adr/0004-linkage-protocol.md. U (|A| x d_A) is A's
one-hot matrix, V (|B| x d_B, or x 2 d_B with a weight) is B's. Each matrix ends up in
replicated secret sharing over Z_2^64 on its n matched rows: three shares named by the pair of
parties holding them, {A,H}, {A,B}, {B,H}; each party holds two. The table T = U_M^T V_M is
then a sum of nine share products, three computed locally by each party; re-randomized with a
zero sharing, the three partial tables are converted to an exact integer sharing of the counts
(see `disclose`), and only d_A x d_B values per party enter MPyC, to be thresholded and opened.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointstats.errors import PeerError
from jointstats.protocols import disclosure
from jointstats.protocols.base import SessionContext
from jointstats.protocols.crosstab import TOTAL
from jointstats.protocols.linked import fuzzy, match, wire
from jointstats.protocols.linked.job import KIND, LinkedJob
from jointstats.protocols.linked.records import MAX_RECORDS, WEIGHT_SCALE, Records
from jointstats.protocols.release import Release, entry_indices, release

log = logging.getLogger(__name__)
SECINT_BITS = 64  # its field (~2^96) holds T + r < 2^64 exactly
MASK_BITS = 63  # r < 2^63 hides T <= n with statistical distance n / 2^63
HOLDS = {"A": ("AH", "AB"), "B": ("AB", "BH"), "H": ("BH", "AH")}  # (first, second) share
ZERO = {"A": ("AB", "AH"), "B": ("BH", "AB"), "H": ("AH", "BH")}  # alpha = F(plus) - F(minus)
Shares = dict[str, np.ndarray]  # pair name -> n x width uint64 share of a matched matrix


@dataclass
class Shared:
    """One party's state after the share phase."""

    n: int  # matched records
    u: Shares  # its two shares of U_M (left one-hot, matched rows)
    v: Shares  # its two shares of V_M (right one-hot and weighted copy)
    seeds: dict[str, bytes]  # seeds of the two pairs it belongs to (for zero sharings)
    linkage: dict[str, Any] | None = None  # fuzzy linkage: H's quality figures, as released


@dataclass(frozen=True)
class Roles:
    a: int
    b: int
    h: int
    me: str  # "A", "B" or "H"

    @classmethod
    def of(cls, job: LinkedJob, ctx: SessionContext) -> Roles:
        a, b, h = (ctx.pid_of(n) for n in (job.left.node, job.right.node, job.helper))
        return cls(a, b, h, {a: "A", b: "B", h: "H"}[ctx.pid])


@contextmanager
def phase(ctx: SessionContext, name: str) -> Iterator[None]:
    ctx.progress(name)
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started  # a phase may be entered twice (H's match)
        ctx.timings[name] = round(ctx.timings.get(name, 0.0) + elapsed, 4)


def _seed(data: bytes, party: str) -> bytes:
    if len(data) != 32:
        raise PeerError(f"{party} sent a malformed seed")
    return data


def _select(matrix: np.ndarray, index: np.ndarray, party: str) -> np.ndarray:
    if len(index) and int(index.max()) >= len(matrix):
        raise PeerError(f"{party} sent a match index out of range")
    return matrix[index]


async def _recv_exact(ctx: SessionContext, pid: int, width: int, rows: int) -> np.ndarray:
    array = await wire.recv_array(ctx.channel, pid, np.uint64, width, rows)
    if len(array) != rows:
        raise PeerError(f"party {pid} sent {len(array)} rows; {rows} expected")
    return array


async def holder(job: LinkedJob, ctx: SessionContext, roles: Roles, records: Records) -> Shared:
    """A or B: tags to H, one-hot minus a mask to the other holder; U, V shares come back."""
    channel = ctx.channel
    left = roles.me == "A"
    peer, pair_h = (roles.b, "AH") if left else (roles.a, "BH")
    w_u, w_v = job.widths()
    w_me, w_peer = (w_u, w_v) if left else (w_v, w_u)
    with phase(ctx, "tag"):
        keys = await wire.agree_keys(channel, ctx.pid, peer)
        if job.linkage.fuzzy:
            fields = list(job.linkage.fields)
            arrays = await asyncio.to_thread(fuzzy.encode, records.fields, fields, keys.tag)
        else:
            arrays = [await asyncio.to_thread(wire.tags, records.keys, keys.tag)]
        for array in arrays:
            await wire.send_array(channel, roles.h, array)
        del arrays
    with phase(ctx, "match"):
        # the matched positions index the other side's records: never more than ours
        index = await wire.recv_array(channel, roles.h, np.uint32, 1, len(records))
        index = index[:, 0].astype(np.int64)  # the other holder's positions, in match order
        n = len(index)
        linkage = await _recv_quality(job, ctx, roles, n) if job.linkage.fuzzy else None
    with phase(ctx, "share"):
        seed = secrets.token_bytes(32)
        channel.send(roles.h, seed)
        base = job.width(job.left if left else job.right)
        mask = wire.prg(seed, b"mask", (len(records), w_me))
        await wire.send_array(
            channel, peer, wire.masked_one_hot(records.cells, base, mask, records.weights)
        )
        del mask
        own_stream, peer_stream = (
            (keys.left_stream, keys.right_stream) if left else (keys.right_stream, keys.left_stream)
        )
        mine = {
            pair_h: wire.prg(seed, b"rss", (n, w_me)),
            "AB": wire.prg(own_stream, b"rss", (n, w_me)),
        }
        masked = await wire.recv_array(channel, peer, np.uint64, w_peer, MAX_RECORDS)
        theirs_ab = wire.prg(peer_stream, b"rss", (n, w_peer))
        to_h = _select(masked, index, "the other data holder") - theirs_ab
        del masked
        await wire.send_array(channel, roles.h, to_h)
        theirs = {"AB": theirs_ab, pair_h: to_h + await _recv_exact(ctx, roles.h, w_peer, n)}
    seeds = {"AB": keys.zero, pair_h: seed}
    return Shared(n, *((mine, theirs) if left else (theirs, mine)), seeds, linkage)


async def _recv_quality(job: LinkedJob, ctx: SessionContext, roles: Roles, n: int) -> dict:
    """H's quality figures for the metadata, checked (sizes, ranges, histogram adds up to n)."""
    figures = await _recv_exact(ctx, roles.h, 1, 2 + match.HISTOGRAM_BINS)
    linkage = match.quality_metadata(figures[:, 0], job.linkage.threshold, n)
    if linkage is None:
        raise PeerError("the helper sent malformed linkage quality figures")
    return {"method": "fuzzy", "threshold": job.linkage.threshold, **linkage}


async def _recv_encodings(
    job: LinkedJob, ctx: SessionContext, pid: int
) -> tuple[int, list[np.ndarray]]:
    """One holder's encodings (one array per field, then blocking keys), all of one length."""
    widths = [fuzzy.width(f.kind) for f in job.linkage.fields]
    widths.append(len(fuzzy.passes(job.linkage.fields)))
    first = await wire.recv_array(ctx.channel, pid, np.uint64, widths[0], MAX_RECORDS)
    rest = [await _recv_exact(ctx, pid, w, len(first)) for w in widths[1:]]
    return len(first), [first, *rest]


async def _fuzzy_match(
    job: LinkedJob, ctx: SessionContext, roles: Roles
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """H: receive both sides' encodings, link them (protocols.linked.match); returns the sizes,
    the assigned pairs and the quality figures that A and B will receive."""
    with phase(ctx, "tag"):
        size_a, left = await _recv_encodings(job, ctx, roles.a)
        size_b, right = await _recv_encodings(job, ctx, roles.b)
    with phase(ctx, "match"):
        kinds = [f.kind for f in job.linkage.fields]
        rng = np.random.default_rng(secrets.randbits(128))
        blocked = fuzzy.blocked_fields(job.linkage.fields)
        threshold = job.linkage.threshold
        out = await asyncio.to_thread(match.link, kinds, blocked, left, right, threshold, rng)
        del left, right
        for name, seconds in out.seconds.items():
            ctx.timings[f"match_{name}"] = round(seconds, 4)
        log.info(
            "fuzzy linkage: %d candidate pairs, %.3g field comparisons/s, %d pairs assigned",
            out.candidates, out.comparisons_per_second, len(out.i),
        )  # fmt: skip
    figures = match.quality(out.probability, out.recall_estimate, threshold)[:, None]
    return size_a, size_b, out.i, out.j, figures


async def helper(job: LinkedJob, ctx: SessionContext, roles: Roles) -> Shared:
    """H: join the tags, send each holder the other's matched positions, finish the sharing."""
    channel = ctx.channel
    w_u, w_v = job.widths()
    figures = None
    if job.linkage.fuzzy:
        size_a, size_b, i, j, figures = await _fuzzy_match(job, ctx, roles)
    else:
        with phase(ctx, "tag"):
            tags_a = await wire.recv_array(channel, roles.a, np.uint8, wire.TAG_BYTES, MAX_RECORDS)
            tags_b = await wire.recv_array(channel, roles.b, np.uint8, wire.TAG_BYTES, MAX_RECORDS)
        size_a, size_b = len(tags_a), len(tags_b)
        with phase(ctx, "match"):
            i, j = await asyncio.to_thread(wire.match, tags_a, tags_b)
            del tags_a, tags_b
    with phase(ctx, "match"):
        order = np.random.default_rng(secrets.randbits(128)).permutation(len(i))
        i, j = i[order], j[order]
        await wire.send_array(channel, roles.b, i.astype(np.uint32)[:, None])
        await wire.send_array(channel, roles.a, j.astype(np.uint32)[:, None])
        if figures is not None:
            await wire.send_array(channel, roles.a, figures)
            await wire.send_array(channel, roles.b, figures)
    n = len(i)
    linkage = None
    if figures is not None:
        linkage = match.quality_metadata(figures[:, 0], job.linkage.threshold, n)
        linkage = {"method": "fuzzy", "threshold": job.linkage.threshold, **(linkage or {})}
    with phase(ctx, "share"):
        seed_a = _seed(await channel.recv(roles.a), "the left node")
        seed_b = _seed(await channel.recv(roles.b), "the right node")
        u_ah = wire.prg(seed_a, b"rss", (n, w_u))
        u_rest = wire.prg(seed_a, b"mask", (size_a, w_u))[i] - u_ah
        await wire.send_array(channel, roles.b, u_rest)
        v_bh = wire.prg(seed_b, b"rss", (n, w_v))
        v_rest = wire.prg(seed_b, b"mask", (size_b, w_v))[j] - v_bh
        await wire.send_array(channel, roles.a, v_rest)
        u_bh = u_rest + await _recv_exact(ctx, roles.b, w_u, n)
        v_ah = v_rest + await _recv_exact(ctx, roles.a, w_v, n)
    seeds = {"AH": seed_a, "BH": seed_b}
    return Shared(n, {"AH": u_ah, "BH": u_bh}, {"AH": v_ah, "BH": v_bh}, seeds, linkage)


def partial_product(me: str, u: Shares, v: Shares) -> np.ndarray:
    """This party's three of the nine share products of U_M^T V_M, mod 2^64."""
    first, second = HOLDS[me]
    both = v[first] + v[second]
    return np.einsum("ni,nj->ij", u[first], both) + np.einsum("ni,nj->ij", u[second], v[first])


def zero_share(me: str, seeds: dict[str, bytes], shape: tuple[int, int]) -> np.ndarray:
    """alpha_me of a pseudorandom sharing of zero: alpha_A + alpha_B + alpha_H = 0 mod 2^64."""
    plus, minus = ZERO[me]
    return wire.prg(seeds[plus], b"zero", shape) - wire.prg(seeds[minus], b"zero", shape)


async def disclose(
    job: LinkedJob, ctx: SessionContext, roles: Roles, n: int, partial: np.ndarray
) -> tuple[Release, list[int | None]]:
    """Open what disclosure control allows of T = sum of the three partials mod 2^64.

    `partial` is already re-randomized with a zero sharing, so the three are a uniform additive
    sharing of T. Counts: A sends its share to B, H sends its share plus a random r < 2^63 to
    B, so B holds T + r exactly (no wrap-around, T <= n); B inputs T + r and H inputs r into
    MPyC, which subtracts, adds DP noise when asked, and hands the counts to the common release
    step (protocols.release: margins, primary and secondary suppression with n as a public
    grand total, the LP audit). Weighted sums (up to 2^62, too wide to mask that way) are
    opened for released entries only, each party broadcasting its (uniform) share.
    Returns the release and, per entry, the weighted sum (None when suppressed or unweighted).
    """
    mpc, channel = ctx.runtime, ctx.channel
    w_b = job.width(job.right)
    counts_z = np.ascontiguousarray(partial[:, :w_b]).reshape(-1, 1)
    cells = len(counts_z)
    mine = np.zeros(cells, dtype=np.uint64)
    if roles.me == "A":
        await wire.send_array(channel, roles.b, counts_z)
    elif roles.me == "H":
        r = wire.prg(secrets.token_bytes(32), b"r", (cells, 1)) >> np.uint64(64 - MASK_BITS)
        await wire.send_array(channel, roles.b, counts_z + r)
        mine = r[:, 0]
    else:
        from_a = await _recv_exact(ctx, roles.a, 1, cells)
        from_h = await _recv_exact(ctx, roles.h, 1, cells)
        mine = (counts_z + from_a + from_h)[:, 0]  # T + r, exactly
    secint = mpc.SecInt(SECINT_BITS)
    masked, masks = mpc.input([secint(int(x)) for x in mine], senders=[roles.b, roles.h])
    counts = [t - r for t, r in zip(masked, masks, strict=True)]
    bound = n
    if job.disclosure.epsilon:
        noise = disclosure.discrete_laplace_noise(mpc, secint, cells, job.disclosure.epsilon)
        counts = [c + z for c, z in zip(counts, noise, strict=True)]
        bound += cells * disclosure.noise_bound(job.disclosure.epsilon)
    bits = max(bound, ctx.min_cell).bit_length() + 2  # |entry - k| < 2^(bits - 1)
    shape = (job.width(job.left), w_b) if job.disclosure.margins else (cells,)
    outcome = await release(mpc, {"count": counts}, shape, ctx.disclosure, n, bits)
    sums: list[int | None] = [None] * len(outcome.suppressed)
    shown = [i for i, hidden in enumerate(outcome.suppressed) if not hidden]
    if job.weighted and shown:
        weights = np.ascontiguousarray(partial[:, w_b:]).reshape(-1)
        index = entry_indices(shape, job.disclosure.margins)
        share = np.array([[weights[index[i]].sum()] for i in shown], dtype=np.uint64)
        others = [p for p in (roles.a, roles.b, roles.h) if p != ctx.pid]
        for peer in others:
            await wire.send_array(channel, peer, share)
        for peer in others:
            share = share + await _recv_exact(ctx, peer, 1, len(shown))
        for j, i in enumerate(shown):
            sums[i] = int(share[j, 0])
    return outcome, sums


def _labels(job: LinkedJob) -> list[tuple[str, ...]]:
    """Labels of the released lines in release order: cells, then with margins the left
    totals, the right totals and the grand total."""
    left = list(itertools.product(*job.cell_domains(job.left)))
    right = list(itertools.product(*job.cell_domains(job.right)))
    labels = [(*a, *b) for a in left for b in right]
    if not job.disclosure.margins:
        return labels
    left_total, right_total = (TOTAL,) * len(job.left.by), (TOTAL,) * len(job.right.by)
    labels += [(*a, *right_total) for a in left] + [(*left_total, *b) for b in right]
    return [*labels, (*left_total, *right_total)]


def result(
    job: LinkedJob,
    ctx: SessionContext,
    n: int,
    outcome: Release,
    sums: list[int | None],
    linkage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    columns = [*job.left.by, *job.right.by, "count"]
    columns += ["weighted_count"] if job.weighted else []
    rows = []
    for labels, values, total in zip(_labels(job), outcome.values, sums, strict=True):
        row: list[Any] = [*labels, None if values is None else values["count"]]
        if job.weighted:
            row.append(None if total is None else round(total / WEIGHT_SCALE, 6))
        rows.append([*row, values is None])
    metadata = {
        "kind": KIND,
        "inputs": [job.left.node, job.right.node],
        "helper": job.helper,
        "parties": list(ctx.parties),
        "disclosure": dict(ctx.disclosure),
        "epsilon_spent": job.disclosure.epsilon,
        "cells": job.n_cells,
        "suppressed_cells": sum(outcome.suppressed[: job.n_cells]),
        "secondary_suppressed": outcome.secondary_cells,
        "narrowest_interval": outcome.narrowest_interval,
        # n is known to all three parties and to the coordinator (message sizes): it is
        # released, and the suppression audit treats it as a public grand total
        "matched": n,
        "timings": dict(ctx.timings),
    }
    if linkage is not None:  # fuzzy: H's figures, sent to A and B, identical at all three
        metadata["linkage"] = linkage
    return {"columns": [*columns, "suppressed"], "rows": rows, "metadata": metadata}


async def run(job: LinkedJob, ctx: SessionContext, records: Records | None) -> dict[str, Any]:
    roles = Roles.of(job, ctx)
    if records is not None:
        ctx.timings["normalize"] = round(records.seconds, 4)
        shared = await holder(job, ctx, roles, records)
    else:
        shared = await helper(job, ctx, roles)
    n, linkage = shared.n, shared.linkage
    with phase(ctx, "product"):
        partial = await asyncio.to_thread(partial_product, roles.me, shared.u, shared.v)
        partial += zero_share(roles.me, shared.seeds, partial.shape)
        del shared
    with phase(ctx, "disclose"):
        outcome, sums = await disclose(job, ctx, roles, n, partial)
    started = time.perf_counter()
    doc = result(job, ctx, n, outcome, sums, linkage)
    doc["metadata"]["timings"]["release"] = round(time.perf_counter() - started, 4)
    return doc

"""Fuzzy matching at the helper H, steps 1 and 2: blocking and comparison levels.

1. Blocking: each pass's keyed tags join the two sides (records missing a pass's fields sit
   it out). The blocks of all passes are taken smallest first until PAIRS_PER_RECORD pairs
   per record of the larger side (and none above MAX_BLOCK_PAIRS): the least selective
   blocks, those of common values, go first, and the candidate pairs grow linearly with the
   records. Pairs are built by sorting and repeating, never a Python loop per block or pair.
2. Comparison: each candidate pair, field by field, into a discrete level (numpy over chunks
   of pairs): Bloom filters by their Dice coefficient (levels at DICE_LEVELS, popcount with
   `np.bitwise_count`), dates by which tag agrees (same date 3, day and month swapped 2, one
   digit off 1, else 0), exact fields by equality; missing on either side is -1 (no evidence).
The comparison vectors are then counted by distinct pattern (`patterns`): at most 5^fields
of them however many pairs, which is what estimation runs over (protocols.linked.match).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointstats.errors import JobError

# Dice at or above these: levels 1, 2, 3. The top level holds identical values' filters after
# BLIP at the default flip rate (Dice 0.8-0.9), the lower ones one or two typos.
DICE_LEVELS = (0.55, 0.7, 0.78)
LEVELS = {"name": 4, "text": 4, "date": 4, "exact": 2}
MAX_BLOCK_PAIRS = 250_000  # a block this big is skipped in its pass (it is not selective)
MAX_CANDIDATES = 50_000_000  # H refuses a job whose blocking is this coarse
PAIRS_PER_RECORD = 40  # candidate budget: blocks smallest first, this many pairs per record
CHUNK = 32_768  # candidate pairs compared at once (buffers of CHUNK x 8 words stay in cache)
RADIX = 5  # levels -1..3 shifted to 0..4: one base-5 digit per field in a pattern code
MAX_DENSE_PATTERNS = 5**9  # up to 9 fields, patterns are counted in a dense table


@dataclass
class Blocks:
    """One blocking pass: the records with a tag on each side, their block numbers, and the
    number of records of each block on each side."""

    rows_a: np.ndarray
    rows_b: np.ndarray
    code_a: np.ndarray
    code_b: np.ndarray
    count_a: np.ndarray
    count_b: np.ndarray

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> Blocks:
        rows_a, rows_b = np.flatnonzero(a), np.flatnonzero(b)
        keys, inverse = np.unique(np.concatenate([a[rows_a], b[rows_b]]), return_inverse=True)
        code_a, code_b = inverse[: len(rows_a)], inverse[len(rows_a) :]
        count_a = np.bincount(code_a, minlength=len(keys))
        count_b = np.bincount(code_b, minlength=len(keys))
        return cls(rows_a, rows_b, code_a, code_b, count_a, count_b)

    @property
    def sizes(self) -> np.ndarray:
        return self.count_a * self.count_b

    def pairs(self, largest: int, n_right: int) -> np.ndarray:
        """Pair codes i * n_right + j of the blocks of at most `largest` pairs (sort and
        repeat: no Python loop per block or per pair)."""
        keep = (self.sizes > 0) & (self.sizes <= largest)
        order_b = np.argsort(self.code_b, kind="stable")
        start_b = np.cumsum(self.count_b) - self.count_b
        chosen = keep[self.code_a]
        rows, codes = self.rows_a[chosen], self.code_a[chosen]
        per_row = self.count_b[codes]  # each left record pairs with its block's right records
        total = int(per_row.sum())
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        right = self.rows_b[order_b[np.repeat(start_b[codes], per_row) + within]]
        return np.repeat(rows.astype(np.int64), per_row) * n_right + right


def _largest_block(blocks: list[Blocks], budget: int) -> int:
    """The largest block size such that all blocks up to that size, over all passes, give at
    most `budget` pairs: the least selective blocks (common values) go first."""
    sizes = np.sort(np.concatenate([b.sizes[b.sizes > 0] for b in blocks] or [np.zeros(0)]))
    if not len(sizes):
        return 0
    within = np.cumsum(sizes) <= budget
    if within.all():
        return MAX_BLOCK_PAIRS
    cut = int(sizes[np.argmin(within)])  # the first size that no longer fits
    return min(cut - 1, MAX_BLOCK_PAIRS)


def candidates(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union over passes (columns) of pairs whose blocking tags agree (0 = missing), sorted
    by left then right position (so that comparisons read the left side in order). Blocks
    are taken smallest first, up to PAIRS_PER_RECORD pairs per record of the larger side."""
    n_right = max(len(right), 1)
    blocks = [Blocks.of(left[:, p], right[:, p]) for p in range(left.shape[1])]
    largest = _largest_block(blocks, PAIRS_PER_RECORD * max(len(left), len(right)))
    found = [b.pairs(largest, n_right) for b in blocks]
    if sum(len(f) for f in found) > MAX_CANDIDATES:
        raise JobError("fuzzy linkage: blocking leaves too many candidate pairs")
    flat = np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    flat = flat[np.concatenate([[True], flat[1:] != flat[:-1]])] if len(flat) else flat
    return flat // n_right, flat % n_right


def agreeing(left: np.ndarray, right: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(pairs, passes) bool: whether each pair agrees on each pass's (non-missing) tag."""
    out = np.empty((len(i), left.shape[1]), dtype=bool)
    for p in range(left.shape[1]):
        a = left[:, p][i]
        out[:, p] = (a == right[:, p][j]) & (a != 0)
    return out


def dice_levels(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Levels of the Dice coefficient of Bloom filters a[i], b[j]; -1 where one is empty.
    Chunks of pairs go through preallocated buffers (gather, and, popcount in place)."""
    ones_a = np.bitwise_count(a).sum(1, dtype=np.int32)
    ones_b = np.bitwise_count(b).sum(1, dtype=np.int32)
    # 2 * common / total >= level  <=>  common >= level * total / 2: no division
    cuts = np.asarray(DICE_LEVELS) / 2
    out = np.empty(len(i), dtype=np.int8)
    rows_a = np.empty((CHUNK, a.shape[1]), dtype=np.uint64)
    rows_b = np.empty_like(rows_a)
    bits = np.empty(rows_a.shape, dtype=np.uint8)
    for s in range(0, len(i), CHUNK):
        ii, jj = i[s : s + CHUNK], j[s : s + CHUNK]
        x, y = rows_a[: len(ii)], rows_b[: len(ii)]
        np.take(a, ii, axis=0, out=x)
        np.take(b, jj, axis=0, out=y)
        common = np.bitwise_count(np.bitwise_and(x, y, out=x), out=bits[: len(ii)])
        common = common.sum(1, dtype=np.int32)
        total = ones_a[ii] + ones_b[jj]
        level = (common >= cuts[0] * total).astype(np.int8)
        for cut in cuts[1:]:
            level += common >= cut * total
        level[(ones_a[ii] == 0) | (ones_b[jj] == 0)] = -1
        out[s : s + CHUNK] = level
    return out


def date_levels(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Same date 3, day and month swapped 2, one digit off 1, else 0; -1 if one is missing.
    Tag by tag over contiguous columns (1-D gathers from arrays that stay in cache)."""
    columns_a = [np.ascontiguousarray(a[:, c]) for c in range(a.shape[1])]
    columns_b = [np.ascontiguousarray(b[:, c]) for c in range(b.shape[1])]
    out = np.empty(len(i), dtype=np.int8)
    for s in range(0, len(i), CHUNK):
        ii, jj = i[s : s + CHUNK], j[s : s + CHUNK]
        first = columns_a[0][ii]
        missing = (first == 0) | (columns_b[0][jj] == 0)
        slip = np.zeros(len(ii), dtype=bool)
        for x, y in zip(columns_a[2:], columns_b[2:], strict=True):
            slip |= x[ii] == y[jj]
        level = slip.astype(np.int8)
        level[columns_a[1][ii] == columns_b[1][jj]] = 2
        level[first == columns_b[0][jj]] = 3
        level[missing] = -1
        out[s : s + CHUNK] = level
    return out


def exact_levels(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    x, y = a[i, 0], b[j, 0]
    return np.where((x == 0) | (y == 0), -1, (x == y).astype(np.int8)).astype(np.int8)


def compare(
    kinds: list[str], left: list[np.ndarray], right: list[np.ndarray], i: np.ndarray, j: np.ndarray
) -> np.ndarray:
    """(pairs, fields) int8 comparison levels; -1 = missing evidence."""
    by_kind = {"name": dice_levels, "text": dice_levels, "date": date_levels}
    columns = [
        by_kind.get(kind, exact_levels)(a, b, i, j)
        for kind, a, b in zip(kinds, left, right, strict=True)
    ]
    return np.stack(columns, 1) if columns else np.zeros((len(i), 0), dtype=np.int8)


def patterns(gamma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct comparison vectors, their counts, and each pair's pattern index. There are at
    most 5^fields patterns however many pairs: EM and the share run over these counts."""
    if gamma.shape[1] == 0:
        return gamma[:1], np.array([len(gamma)]), np.zeros(len(gamma), dtype=np.int64)
    code = codes(gamma)
    if RADIX ** gamma.shape[1] <= MAX_DENSE_PATTERNS:  # count by code: no sort
        tally = np.bincount(code, minlength=RADIX ** gamma.shape[1])
        seen = np.flatnonzero(tally)
        counts = tally[seen]
        inverse = np.cumsum(tally > 0)[code] - 1
    else:
        seen, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
    distinct = np.empty((len(seen), gamma.shape[1]), dtype=np.int8)
    rest = seen.copy()
    for f in reversed(range(gamma.shape[1])):
        rest, digit = np.divmod(rest, RADIX)
        distinct[:, f] = digit - 1
    return distinct, counts, inverse


def codes(gamma: np.ndarray) -> np.ndarray:
    """One int64 per comparison vector: its levels as base-RADIX digits."""
    code = np.zeros(len(gamma), dtype=np.int64)
    for f in range(gamma.shape[1]):
        code = code * RADIX + (gamma[:, f].astype(np.int64) + 1)
    return code

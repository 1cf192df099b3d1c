"""Fuzzy matching at the helper H: blocking, comparison levels, Fellegi–Sunter by EM, 1:1.

H holds, per record of each side, the keyed encodings of `fuzzy.encode` (it cannot invert
them: it lacks the key). It
1. blocks: joins the two sides on each blocking pass's keyed tags (records missing a pass's
   fields sit it out; a block with more than MAX_BLOCK_PAIRS pairs is skipped in that pass),
   and takes the union of the candidate pairs;
2. compares each candidate pair field by field into a discrete level (numpy, vectorised):
   Bloom filters by their Dice coefficient (levels at DICE_LEVELS), dates by which tag agrees
   (same date 3, day and month swapped 2, one digit off 1, else 0), exact fields by equality;
   a missing value on either side is level -1, no evidence;
3. estimates u (level frequencies among non-matches) from uniformly random pairs, and m and
   the match share by EM over the candidates' comparison vectors with u fixed (as splink
   does), assuming fields independent given the match status (Fellegi & Sunter 1969);
4. computes each candidate's match probability and assigns pairs one to one, greedily by
   decreasing probability, among those at or above the threshold.
Quality figures for the metadata: the estimated false-match rate of the assigned pairs (mean
of 1 - p), an estimate of recall (assigned probability mass over all candidates' mass) and a
histogram of the assigned pairs' probabilities (it adds up to n, which is public).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from jointstats.errors import JobError

DICE_LEVELS = (0.55, 0.7, 0.78)  # Dice at or above these: levels 1, 2, 3
LEVELS = {"name": 4, "text": 4, "date": 4, "exact": 2}
MAX_BLOCK_PAIRS = 250_000  # a block this big is skipped in its pass (it is not selective)
MAX_CANDIDATES = 50_000_000  # H refuses a job whose blocking is this coarse
PAIRS_PER_RECORD = 40  # candidate budget: blocks smallest first, up to this many pairs per record
RANDOM_PAIRS = 200_000  # pairs sampled to estimate u
CHUNK = 32_768  # candidate pairs compared at once (buffers of CHUNK x 8 words stay in cache)
HISTOGRAM_BINS = 10
RADIX = 5  # levels -1..3 shifted to 0..4: one base-5 digit per field in a pattern code
SAFETY = 2  # residual linkage: chance agreements at least 2x likelier than independence says
MAX_DENSE_PATTERNS = 5**9  # up to 9 fields, patterns are counted in a dense table
PPM = 1_000_000  # rates travel as integers in millionths


@dataclass
class Model:
    """Fellegi–Sunter parameters: per field, P(level | match) and P(level | non-match)."""

    m: list[np.ndarray]
    u: list[np.ndarray]
    share: float  # prior probability that a candidate pair is a match
    iterations: int = 0


@dataclass
class Outcome:
    i: np.ndarray  # left positions of the assigned pairs
    j: np.ndarray  # right positions
    probability: np.ndarray  # their match probabilities
    candidates: int
    comparisons_per_second: float
    model: Model
    recall_estimate: float
    seconds: dict[str, float] = field(default_factory=dict)


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
    code = np.zeros(len(gamma), dtype=np.int64)
    for f in range(gamma.shape[1]):
        code = code * RADIX + (gamma[:, f].astype(np.int64) + 1)
    if RADIX ** gamma.shape[1] <= MAX_DENSE_PATTERNS:  # count by code: no sort
        tally = np.bincount(code, minlength=RADIX ** gamma.shape[1])
        codes = np.flatnonzero(tally)
        counts = tally[codes]
        inverse = np.cumsum(tally > 0)[code] - 1
    else:
        codes, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
    distinct = np.empty((len(codes), gamma.shape[1]), dtype=np.int8)
    rest = codes.copy()
    for f in reversed(range(gamma.shape[1])):
        rest, digit = np.divmod(rest, RADIX)
        distinct[:, f] = digit - 1
    return distinct, counts, inverse


def _frequencies(levels: np.ndarray, count: int, weights: np.ndarray | None = None) -> np.ndarray:
    present = levels >= 0
    w = np.ones(len(levels)) if weights is None else weights
    tally = np.bincount(levels[present], weights=w[present], minlength=count)
    return (tally + 0.5) / (tally.sum() + 0.5 * count)  # add-half smoothing: no zero level


def _likelihoods(gamma: np.ndarray, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """log P(gamma | match) - log P(gamma | non-match) per field summed, i.e. log Bayes factor."""
    log_ratio = np.zeros(len(gamma))
    for f in range(gamma.shape[1]):
        levels = gamma[:, f]
        present = levels >= 0
        weight = np.log(model.m[f]) - np.log(model.u[f])
        log_ratio[present] += weight[levels[present]]
    return log_ratio, np.log(model.share) - np.log1p(-model.share)


def probabilities(gamma: np.ndarray, model: Model) -> np.ndarray:
    log_ratio, prior = _likelihoods(gamma, model)
    return 1.0 / (1.0 + np.exp(-(log_ratio + prior)))


def _start(count: int) -> np.ndarray:
    """EM's starting m: agreement likely among matches."""
    start = np.geomspace(1.0, 20.0**count, count) if count > 1 else np.ones(1)
    return start / start.sum()


def _em_m(
    gamma: np.ndarray,
    weight: np.ndarray,
    u: list[np.ndarray],
    counts: list[int],
    iterations: int,
    tolerance: float,
) -> list[np.ndarray]:
    """EM for m and the match share with u fixed, over the distinct comparison vectors
    `gamma` of one blocking pass (each seen `weight` times) on the fields that pass does not
    block on (there, non-matches agree as random pairs do)."""
    model = Model([_start(c) for c in counts], u, 0.1)
    total = float(weight.sum())
    for step in range(1, iterations + 1):
        p = probabilities(gamma, model)
        new_m = [_frequencies(gamma[:, f], c, p * weight) for f, c in enumerate(counts)]
        share = float(np.clip((p * weight).sum() / total, 1e-9, 1 - 1e-6))
        change = max(
            abs(share - model.share),
            *(float(np.abs(a - b).max()) for a, b in zip(new_m, model.m, strict=True)),
        )
        model = Model(new_m, u, share, step)
        if change < tolerance:
            break
    return model.m


def estimate(
    gamma: np.ndarray,
    u: list[np.ndarray],
    counts: list[int],
    pass_of: np.ndarray,
    blocked: list[set[int]],
    pairs: int,
    iterations: int = 200,
    tolerance: float = 1e-6,
) -> Model:
    """Fellegi–Sunter parameters as splink trains them. u: from random pairs (given).
    m of a field: EM (u fixed) over the candidates of each blocking pass that does not block
    on it, averaged over those passes. The match share: over the whole space of `pairs` pairs,
    a fixed point of "expected matches = sum of the candidates' probabilities". Everything
    runs over the counts of distinct comparison vectors, not over pairs."""
    fields = len(counts)
    found: list[list[np.ndarray]] = [[] for _ in range(fields)]
    for p, on in enumerate(blocked):
        rows = pass_of[:, p]
        free = [f for f in range(fields) if f not in on]
        if not free or rows.sum() < 10:
            continue
        distinct, weight, _ = patterns(gamma[rows][:, free])
        m = _em_m(distinct, weight.astype(float), [u[f] for f in free],
                  [counts[f] for f in free], iterations, tolerance)  # fmt: skip
        for f, estimate_f in zip(free, m, strict=True):
            found[f].append(estimate_f)
    m = [np.mean(found[f], axis=0) if found[f] else _start(c) for f, c in enumerate(counts)]
    distinct, weight, _ = patterns(gamma)
    start = Model(m, u, max(len(gamma) / 100, 1.0) / pairs)
    return _share(distinct, weight.astype(float), start, pairs, iterations)


def _share(
    gamma: np.ndarray, weight: np.ndarray, model: Model, pairs: int, iterations: int
) -> Model:
    """The prior match share over all pairs: expected matches = sum of the probabilities."""
    for step in range(1, iterations + 1):
        expected = float((probabilities(gamma, model) * weight).sum())
        share = float(np.clip(expected / pairs, 1e-12, 0.5))
        done = abs(share - model.share) <= 1e-6 * model.share
        model = Model(model.m, model.u, share, step)
        if done:
            break
    return model


def assign(i: np.ndarray, j: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of a one-to-one set of pairs with p >= threshold, greedily by decreasing p
    (ties by position, so the choice is deterministic). The loop runs over pairs above the
    threshold only (about one per linked record)."""
    keep = np.flatnonzero(p >= threshold)
    order = keep[np.lexsort((j[keep], i[keep], -p[keep]))]
    used_i, used_j, chosen = set(), set(), []
    for k, a, b in zip(order.tolist(), i[order].tolist(), j[order].tolist(), strict=True):
        if a in used_i or b in used_j:
            continue
        used_i.add(a)
        used_j.add(b)
        chosen.append(k)
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class Background:
    """Comparison levels of uniformly random pairs (almost all non-matches): per field,
    P(level | non-match) among present values (`u`) and P(level or missing | non-match)
    (`with_missing`, index 0 = missing)."""

    u: list[np.ndarray]
    with_missing: list[np.ndarray]

    @classmethod
    def sample(cls, kinds: list[str], left: list, right: list, rng) -> Background:
        size_a, size_b = len(left[0]), len(right[0])
        sample = min(RANDOM_PAIRS, size_a * size_b)
        ri = np.sort(rng.integers(0, max(size_a, 1), sample))
        rj = rng.integers(0, max(size_b, 1), sample)
        gamma = compare(kinds, left, right, ri, rj)
        u = [_frequencies(gamma[:, f], LEVELS[k]) for f, k in enumerate(kinds)]
        missing = [_frequencies(gamma[:, f] + 1, LEVELS[k] + 1) for f, k in enumerate(kinds)]
        return cls(u, missing)


def _codes(gamma: np.ndarray) -> np.ndarray:
    code = np.zeros(len(gamma), dtype=np.int64)
    for f in range(gamma.shape[1]):
        code = code * RADIX + (gamma[:, f].astype(np.int64) + 1)
    return code


def residual(
    gamma: np.ndarray, model: Model, background: Background, free: float, cross: Cross
) -> np.ndarray:
    """Match probability of the candidates among records that the first assignment left
    unlinked (`free` pairs), from the counts of their comparison vectors: a vector g seen
    C(g) times and expected E(g) times among non-matches has P(match | g) ~ 1 - E(g) / C(g).
    E(g) is the larger of two estimates: `free` x P(g | non-match) with fields independent
    (times SAFETY: given name and sex, for one, are not), and the rate of g among candidates
    with exactly one record linked, which are non-matches under the one-to-one rule and
    carry the fields' real dependence. This recovers true pairs whose only evidence is
    agreement on a few fields with the others missing: over all pairs such a vector is
    ambiguous (the Fellegi–Sunter probability treats missing as no evidence), but once the
    records that link with certainty are set aside, few others can show it by chance. Only
    vectors with evidence for a match (Bayes factor > 1) and no disagreeing field qualify:
    among the many sparse vectors with a disagreement, some occur once by chance."""
    distinct, seen, inverse = patterns(gamma)
    chance = np.full(len(distinct), float(free) * SAFETY)
    for f in range(distinct.shape[1]):
        chance *= background.with_missing[f][distinct[:, f].astype(np.int64) + 1]
    codes, tally = np.unique(_codes(cross.gamma), return_counts=True)
    at = np.clip(np.searchsorted(codes, _codes(distinct)), 0, max(len(codes) - 1, 0))
    found = tally[at] * (codes[at] == _codes(distinct)) if len(codes) else np.zeros(len(at))
    chance = np.maximum(chance, free * found / max(cross.pairs, 1.0))
    log_ratio, _ = _likelihoods(distinct, model)
    agree = (distinct != 0).all(1)  # every present field agrees at least partly
    p = np.clip(1.0 - chance / seen, 0.0, 1.0) * (log_ratio > 0) * agree
    return p[inverse]


@dataclass
class Cross:
    """Comparison vectors of the candidates with exactly one record linked, and the number
    of such pairs in the whole space."""

    gamma: np.ndarray
    pairs: float


def _shared_out(i: np.ndarray, j: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A record with k qualifying residual candidates (two people of the same name, both
    unlinked) cannot tell them apart: each gets 1/k of the probability."""
    rivals = p > 0
    per_i = np.bincount(i[rivals], minlength=int(i.max(initial=0)) + 1)
    per_j = np.bincount(j[rivals], minlength=int(j.max(initial=0)) + 1)
    return p / np.maximum(np.maximum(per_i[i], per_j[j]), 1)


def link(
    kinds: list[str],
    blocked: list[set[int]],
    left: list[np.ndarray],
    right: list[np.ndarray],
    threshold: float,
    rng: np.random.Generator,
) -> Outcome:
    """Everything H does between receiving the encodings and sending the index lists.
    `left`/`right`: one array per field, then the blocking keys; `blocked[p]`: the fields
    blocking pass p agrees on."""
    seconds = {}
    started = time.perf_counter()
    i, j = candidates(left[-1], right[-1])
    pass_of = agreeing(left[-1], right[-1], i, j)
    seconds["block"] = time.perf_counter() - started
    size_a, size_b = len(left[-1]), len(right[-1])
    counts = [LEVELS[k] for k in kinds]
    started = time.perf_counter()
    gamma = compare(kinds, left[:-1], right[:-1], i, j)
    compared = time.perf_counter() - started
    seconds["compare"] = compared
    started = time.perf_counter()
    background = Background.sample(kinds, left[:-1], right[:-1], rng)
    model = estimate(gamma, background.u, counts, pass_of, blocked, max(size_a * size_b, 1))
    distinct, _, inverse = patterns(gamma)
    p = probabilities(distinct, model)[inverse]
    seconds["estimate"] = time.perf_counter() - started
    started = time.perf_counter()
    chosen = assign(i, j, p, threshold)
    linked_i, linked_j = np.isin(i, i[chosen]), np.isin(j, j[chosen])
    rest = np.flatnonzero(~linked_i & ~linked_j)
    n = len(chosen)
    free = (size_a - n) * (size_b - n)
    cross = Cross(gamma[linked_i != linked_j], float((size_a - n) * n + n * (size_b - n)))
    second = _shared_out(i[rest], j[rest], residual(gamma[rest], model, background, free, cross))
    extra = rest[assign(i[rest], j[rest], second, threshold)]
    p[extra] = np.maximum(p[extra], second[np.searchsorted(rest, extra)])
    chosen = np.concatenate([chosen, extra])
    seconds["assign"] = time.perf_counter() - started
    mass = float(p.sum())
    recall = float(p[chosen].sum()) / mass if mass else 1.0
    rate = len(i) * len(kinds) / compared if compared else 0.0
    return Outcome(i[chosen], j[chosen], p[chosen], len(i), rate, model, min(recall, 1.0), seconds)


def quality(probability: np.ndarray, recall: float, threshold: float) -> np.ndarray:
    """What H sends A and B for the metadata, as integers: false-match rate and recall in
    millionths, then the histogram of assigned probabilities over HISTOGRAM_BINS bins."""
    false_rate = float(np.mean(1.0 - probability)) if len(probability) else 0.0
    edges = histogram_edges(threshold)
    hist, _ = np.histogram(np.clip(probability, threshold, 1.0), bins=edges)
    head = [round(false_rate * PPM), round(recall * PPM)]
    return np.array([*head, *hist.tolist()], dtype=np.uint64)


def histogram_edges(threshold: float) -> np.ndarray:
    return np.linspace(threshold, 1.0, HISTOGRAM_BINS + 1)


def quality_metadata(figures: np.ndarray, threshold: float, n: int) -> dict | None:
    """The metadata every party derives from H's figures; None if they are malformed."""
    values = [int(v) for v in figures]
    if len(values) != 2 + HISTOGRAM_BINS or max(values[:2]) > PPM or sum(values[2:]) != n:
        return None
    edges = histogram_edges(threshold)
    return {
        "estimated_false_match_rate": values[0] / PPM,
        "estimated_recall": values[1] / PPM,
        "probability_histogram": {
            "edges": [round(float(e), 4) for e in edges],
            "counts": values[2:],
        },
    }

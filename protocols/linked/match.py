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
import pandas as pd

from jointstats.errors import JobError

DICE_LEVELS = (0.55, 0.7, 0.84)  # Dice at or above these: levels 1, 2, 3
LEVELS = {"name": 4, "text": 4, "date": 4, "exact": 2}
MAX_BLOCK_PAIRS = 250_000  # a block this big is skipped in its pass (it is not selective)
MAX_CANDIDATES = 50_000_000  # H refuses a job whose blocking is this coarse
RANDOM_PAIRS = 200_000  # pairs sampled to estimate u
CHUNK = 200_000  # candidate pairs compared at once (memory ~ CHUNK x 8 words x 8 bytes)
HISTOGRAM_BINS = 10
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


def candidates(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union over passes (columns) of pairs whose blocking tags agree (0 = missing)."""
    found = []
    n_right = len(right)
    for p in range(left.shape[1]):
        a = pd.DataFrame({"key": left[:, p], "i": np.arange(len(left))})
        b = pd.DataFrame({"key": right[:, p], "j": np.arange(n_right)})
        a, b = a[a["key"] != 0], b[b["key"] != 0]
        size = a["key"].value_counts().mul(b["key"].value_counts(), fill_value=0)
        keep = size.index[(size > 0) & (size <= MAX_BLOCK_PAIRS)]
        a, b = a[a["key"].isin(keep)], b[b["key"].isin(keep)]
        pairs = a.merge(b, on="key")
        found.append(pairs["i"].to_numpy(np.int64) * n_right + pairs["j"].to_numpy(np.int64))
        if sum(len(f) for f in found) > MAX_CANDIDATES:
            raise JobError("fuzzy linkage: blocking leaves too many candidate pairs")
    flat = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return flat // max(n_right, 1), flat % max(n_right, 1)


def dice_levels(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Levels of the Dice coefficient of Bloom filters a[i], b[j]; -1 where one is empty."""
    ones_a = np.bitwise_count(a).sum(1, dtype=np.int64)
    ones_b = np.bitwise_count(b).sum(1, dtype=np.int64)
    out = np.empty(len(i), dtype=np.int8)
    for s in range(0, len(i), CHUNK):
        ii, jj = i[s : s + CHUNK], j[s : s + CHUNK]
        common = np.bitwise_count(a[ii] & b[jj]).sum(1, dtype=np.int64)
        total = ones_a[ii] + ones_b[jj]
        dice = 2 * common / np.maximum(total, 1)
        level = np.searchsorted(np.asarray(DICE_LEVELS), dice, side="right").astype(np.int8)
        level[(ones_a[ii] == 0) | (ones_b[jj] == 0)] = -1
        out[s : s + CHUNK] = level
    return out


def date_levels(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i), dtype=np.int8)
    for s in range(0, len(i), CHUNK):
        x, y = a[i[s : s + CHUNK]], b[j[s : s + CHUNK]]
        same = x == y
        level = np.where(same[:, 0], 3, np.where(same[:, 1], 2, np.where(same[:, 2:].any(1), 1, 0)))
        level[(x[:, 0] == 0) | (y[:, 0] == 0)] = -1
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


def _em_m(
    gamma: np.ndarray, u: list[np.ndarray], counts: list[int], iterations: int, tolerance: float
) -> list[np.ndarray]:
    """EM for m and the match share with u fixed, over pairs of one blocking pass and the
    fields that pass does not block on (there, non-matches agree as random pairs do)."""
    m = []
    for c in counts:  # start: agreement likely among matches
        start = np.geomspace(1.0, 20.0**c, c) if c > 1 else np.ones(1)
        m.append(start / start.sum())
    model = Model(m, u, 0.1)
    for step in range(1, iterations + 1):
        p = probabilities(gamma, model)
        new_m = [_frequencies(gamma[:, f], c, p) for f, c in enumerate(counts)]
        share = float(np.clip(p.mean(), 1e-9, 1 - 1e-6))
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
    a fixed point of "expected matches = sum of the candidates' probabilities"."""
    fields = len(counts)
    found: list[list[np.ndarray]] = [[] for _ in range(fields)]
    for p, on in enumerate(blocked):
        rows = pass_of[:, p]
        free = [f for f in range(fields) if f not in on]
        if not free or rows.sum() < 10:
            continue
        m = _em_m(gamma[rows][:, free], [u[f] for f in free], [counts[f] for f in free],
                  iterations, tolerance)  # fmt: skip
        for f, estimate_f in zip(free, m, strict=True):
            found[f].append(estimate_f)
    m = []
    for f, c in enumerate(counts):
        if found[f]:
            m.append(np.mean(found[f], axis=0))
        else:  # every pass blocks on this field: agreement as the EM start assumes
            start = np.geomspace(1.0, 20.0**c, c) if c > 1 else np.ones(1)
            m.append(start / start.sum())
    model = _share(gamma, Model(m, u, max(len(gamma) / 100, 1.0) / pairs), pairs, iterations)
    return model


def _share(gamma: np.ndarray, model: Model, pairs: int, iterations: int) -> Model:
    """The prior match share over all pairs: expected matches = sum of the probabilities."""
    for step in range(1, iterations + 1):
        expected = float(probabilities(gamma, model).sum())
        share = float(np.clip(expected / pairs, 1e-12, 0.5))
        done = abs(share - model.share) <= 1e-6 * model.share
        model = Model(model.m, model.u, share, step)
        if done:
            break
    return model


def assign(i: np.ndarray, j: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of a one-to-one set of pairs with p >= threshold, greedily by decreasing p
    (ties by position, so the choice is deterministic)."""
    keep = np.flatnonzero(p >= threshold)
    order = keep[np.lexsort((j[keep], i[keep], -p[keep]))]
    used_i, used_j, chosen = set(), set(), []
    for k in order.tolist():
        a, b = int(i[k]), int(j[k])
        if a in used_i or b in used_j:
            continue
        used_i.add(a)
        used_j.add(b)
        chosen.append(k)
    return np.asarray(chosen, dtype=np.int64)


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
    pass_of = (left[-1][i] == right[-1][j]) & (left[-1][i] != 0)
    seconds["block"] = time.perf_counter() - started
    size_a, size_b = len(left[-1]), len(right[-1])
    counts = [LEVELS[k] for k in kinds]
    started = time.perf_counter()
    gamma = compare(kinds, left[:-1], right[:-1], i, j)
    compared = time.perf_counter() - started
    seconds["compare"] = compared
    started = time.perf_counter()
    sample = min(RANDOM_PAIRS, size_a * size_b)
    ri = rng.integers(0, max(size_a, 1), sample)
    rj = rng.integers(0, max(size_b, 1), sample)
    random_gamma = compare(kinds, left[:-1], right[:-1], ri, rj)
    u = [_frequencies(random_gamma[:, f], c) for f, c in enumerate(counts)]
    model = estimate(gamma, u, counts, pass_of, blocked, max(size_a * size_b, 1))
    p = probabilities(gamma, model)
    seconds["estimate"] = time.perf_counter() - started
    started = time.perf_counter()
    chosen = assign(i, j, p, threshold)
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

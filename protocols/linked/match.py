"""Fuzzy matching at the helper H: Fellegi–Sunter by EM, then one-to-one assignment.

H holds, per record of each side, the keyed encodings of `fuzzy.encode` (it cannot invert
them: it lacks the key). It
1. blocks and 2. compares the candidate pairs into comparison levels
   (protocols.linked.compare: a candidate budget linear in the records, numpy throughout);
3. estimates u (level frequencies among non-matches) from uniformly random pairs, and m by
   EM with u fixed over each blocking pass's candidates on the fields that pass does not
   block on (as splink trains), assuming fields independent given the match status
   (Fellegi & Sunter 1969); the match share over the whole pair space. Both run over the
   counts of distinct comparison vectors, not over pairs;
4. assigns pairs one to one, greedily by decreasing probability, at or above the threshold;
5. among the records left unlinked, assigns a second time from the counts of comparison
   vectors against chance (`residual`): pairs whose only evidence is agreement on a few
   fields with the others missing, which over all pairs are ambiguous.
Quality figures for the metadata: the estimated false-match rate of the assigned pairs (mean
of 1 - p), an estimate of recall (assigned probability mass over all candidates' mass) and a
histogram of the assigned pairs' probabilities (it adds up to n, which is public).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from jointstats.protocols.linked.compare import (
    LEVELS,
    agreeing,
    candidates,
    codes,
    compare,
    patterns,
)

RANDOM_PAIRS = 200_000  # pairs sampled to estimate u
HISTOGRAM_BINS = 10
SAFETY = 2  # residual linkage: chance agreements at least 2x likelier than independence says
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
    start = Model(m, u, min(max(len(gamma) / 100, 1.0) / pairs, 0.5))  # 0.5: a tiny space
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


@dataclass
class Cross:
    """Comparison vectors of the candidates with exactly one record linked, and the number
    of such pairs in the whole space."""

    gamma: np.ndarray
    pairs: float


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
    vectors with evidence for a match (Bayes factor > 1) whose present fields all agree
    strongly qualify: among the many sparse vectors with a weak or no agreement, some occur
    a few times by chance, and blocking makes weak agreements (a date one digit off among
    pairs born the same year) far commoner than independence says."""
    distinct, seen, inverse = patterns(gamma)
    chance = np.full(len(distinct), float(free) * SAFETY)
    for f in range(distinct.shape[1]):
        chance *= background.with_missing[f][distinct[:, f].astype(np.int64) + 1]
    chance = np.maximum(chance, free * _seen_among(cross.gamma, distinct) / max(cross.pairs, 1))
    log_ratio, _ = _likelihoods(distinct, model)
    p = np.clip(1.0 - chance / seen, 0.0, 1.0) * (log_ratio > 0) * _strong(distinct, model)
    return p[inverse]


def _strong(distinct: np.ndarray, model: Model) -> np.ndarray:
    """Vectors whose present fields are all at one of their two top levels (an exact field:
    equal; a name, place or date: the same or nearly)."""
    tops = np.array([max(len(m) - 2, 1) for m in model.m])
    return ((distinct < 0) | (distinct >= tops)).all(1)


def _seen_among(gamma: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """How often each of the `distinct` comparison vectors occurs in `gamma`."""
    known, tally = np.unique(codes(gamma), return_counts=True)
    wanted = codes(distinct)
    if not len(known):
        return np.zeros(len(distinct))
    at = np.clip(np.searchsorted(known, wanted), 0, len(known) - 1)
    return np.where(known[at] == wanted, tally[at], 0)


def _shared_out(i: np.ndarray, j: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A record with k qualifying residual candidates (two people of the same name, both
    unlinked) cannot tell them apart: each gets 1/k of the probability."""
    rivals = p > 0
    per_i = np.bincount(i[rivals], minlength=int(i.max(initial=0)) + 1)
    per_j = np.bincount(j[rivals], minlength=int(j.max(initial=0)) + 1)
    return p / np.maximum(np.maximum(per_i[i], per_j[j]), 1)


def _second_round(
    i: np.ndarray,
    j: np.ndarray,
    gamma: np.ndarray,
    p: np.ndarray,
    chosen: np.ndarray,
    model: Model,
    background: Background,
    sizes: tuple[int, int],
    threshold: float,
) -> np.ndarray:
    """The residual assignment among candidates whose two records the first left unlinked;
    returns their indices and raises `p` there to the residual probability."""
    size_a, size_b = sizes
    linked_a, linked_b = np.zeros(size_a, dtype=bool), np.zeros(size_b, dtype=bool)
    linked_a[i[chosen]], linked_b[j[chosen]] = True, True
    linked_i, linked_j = linked_a[i], linked_b[j]
    rest = np.flatnonzero(~linked_i & ~linked_j)
    n = len(chosen)
    free = (size_a - n) * (size_b - n)
    cross = Cross(gamma[linked_i != linked_j], float((size_a - n) * n + n * (size_b - n)))
    second = _shared_out(i[rest], j[rest], residual(gamma[rest], model, background, free, cross))
    extra = rest[assign(i[rest], j[rest], second, threshold)]
    p[extra] = np.maximum(p[extra], second[np.searchsorted(rest, extra)])
    return extra


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
    extra = _second_round(i, j, gamma, p, chosen, model, background, (size_a, size_b), threshold)
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

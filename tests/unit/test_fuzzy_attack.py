"""H attacks the surname encodings with a public list of name frequencies (issue 11).

H sees each record's keyed Bloom filter but not the key. The frequency attack: group identical
filters, rank the groups by size and give the k-th largest group the k-th most frequent name
of the public list. A stronger variant first clusters filters that are near each other
(leader clustering at the Dice threshold, among 0.75-0.9, that re-identifies most), which
undoes random bit flips. Re-identification rate: the share of records whose guessed surname
is their true surname. Printed with `pytest -s`; measured
figures are in docs/protocols/linked_crosstab.md.

H also holds the blocking tags: equal tags mean equal tokens (a name's consonant skeleton
with another field's token). The tag attack joins records that share the tag of any pass
involving the surname (connected components) and aligns the components to the same list."""

from __future__ import annotations

import functools
import secrets

import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from jointstats.protocols.linked import fuzzy, synthetic
from jointstats.protocols.linked.job import parse_linkage


def _filters(flip: float) -> tuple[np.ndarray, list[str]]:
    data = synthetic.make(registry=4000, survey=100, shared=50)
    truth = [fuzzy.normalize_name(s) for s in data.registry["surname"]]
    column = pa.array(truth, type=pa.string())
    return fuzzy.encode_field(column, "name", secrets.token_bytes(32), flip), truth


def _public_ranking() -> list[str]:
    frequencies = synthetic.name_frequencies(synthetic.SURNAMES, synthetic.SURNAME_POWER)
    ranked = sorted(frequencies, key=frequencies.get, reverse=True)
    return list(dict.fromkeys(fuzzy.normalize_name(s) for s in ranked))


def _align(groups: np.ndarray, truth: list[str]) -> float:
    """Frequency alignment of group labels to the public ranking; share re-identified."""
    labels, counts = np.unique(groups, return_counts=True)
    ranking = _public_ranking()
    order = labels[np.argsort(-counts, kind="stable")]
    guess = {int(g): ranking[k] for k, g in enumerate(order[: len(ranking)])}
    hits = sum(guess.get(int(g)) == t for g, t in zip(groups, truth, strict=True))
    return hits / len(truth)


def exact_attack(filters: np.ndarray, truth: list[str]) -> float:
    _, groups = np.unique(filters, axis=0, return_inverse=True)
    return _align(groups.ravel(), truth)


def cluster_attack(filters: np.ndarray, truth: list[str], dice: float = 0.75) -> float:
    ones = np.bitwise_count(filters).sum(1)
    groups = np.full(len(filters), -1)
    leaders: list[int] = []
    for k in range(len(filters)):
        if leaders:
            lead = np.asarray(leaders)
            common = np.bitwise_count(filters[lead] & filters[k]).sum(1)
            score = 2 * common / (ones[lead] + ones[k])
            best = int(np.argmax(score))
            if score[best] >= dice:
                groups[k] = best
                continue
        leaders.append(k)
        groups[k] = len(leaders) - 1
    return _align(groups, truth)


DICE = (0.75, 0.8, 0.85, 0.9)  # the clustering attacker tries these and keeps the best


@functools.cache
def _clustered_blip() -> float:
    hardened, truth = _filters(fuzzy.FLIP)
    return max(cluster_attack(hardened, truth, dice) for dice in DICE)


def test_bit_flips_defeat_the_frequency_attack_but_not_clustering():
    plain, truth = _filters(0.0)
    hardened, _ = _filters(fuzzy.FLIP)
    rates = {
        "exact, no hardening": exact_attack(plain, truth),
        f"exact, BLIP {fuzzy.FLIP}": exact_attack(hardened, truth),
        "cluster, no hardening": max(cluster_attack(plain, truth, dice) for dice in DICE),
        f"cluster, BLIP {fuzzy.FLIP}": _clustered_blip(),
    }
    print("\nsurname re-identification rate by H:", {k: round(v, 3) for k, v in rates.items()})
    assert rates["exact, no hardening"] > 0.04  # the attack works on plain filters
    assert rates[f"exact, BLIP {fuzzy.FLIP}"] < rates["exact, no hardening"] / 5
    # stated limitation: flips this small do not stop an attacker who clusters first
    assert rates[f"cluster, BLIP {fuzzy.FLIP}"] > rates[f"exact, BLIP {fuzzy.FLIP}"]


def tag_attack(tags: np.ndarray, passes: list[int], truth: list[str]) -> float:
    """Components of "shares a non-missing tag of one of `passes`", aligned by size."""
    rows, cols = [], []
    for p in passes:
        present = np.flatnonzero(tags[:, p])
        _, first, groups = np.unique(tags[present, p], return_index=True, return_inverse=True)
        rows.append(present)
        cols.append(present[first[groups]])  # each record to its group's first record
    n = len(truth)
    r, c = np.concatenate(rows), np.concatenate(cols)
    _, components = connected_components(coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)))
    return _align(components, truth)


def test_blocking_tags_leak_less_than_clustered_filters():
    data = synthetic.make(registry=4000, survey=100, shared=50)
    truth = [fuzzy.normalize_name(s) for s in data.registry["surname"]]
    fields = list(
        parse_linkage({"linkage": {"method": "fuzzy", "fields": synthetic.JOB_FIELDS}}).fields
    )
    columns = [
        fuzzy.normalize_column(
            pa.array([v or None for v in data.registry[f.left]], pa.string()),
            fuzzy.normalizer(f, "left"),
        )
        for f in fields
    ]
    tags = fuzzy.blocking_keys(columns, fields, secrets.token_bytes(32))
    surname = [p for p, parts in enumerate(fuzzy.passes(fields)) if any(f == 0 for f, _ in parts)]
    rate = tag_attack(tags, surname, truth)
    clustered = _clustered_blip()
    print(f"\nsurname re-identification by H: tags {rate:.3f}, clustered filters {clustered:.3f}")
    assert 0 < rate < clustered  # the tags leak, but less than the filters already do

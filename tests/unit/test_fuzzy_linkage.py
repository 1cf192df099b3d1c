"""Fuzzy linkage pieces: job schema, normalisation, date tolerance, keyed encodings, EM, 1:1."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest

from jointstats.errors import JobError
from jointstats.protocols.linked import compare, fuzzy, match, synthetic
from jointstats.protocols.linked.job import parse

JOB = {
    "kind": "linked_crosstab",
    "helper": "h",
    "left": {"node": "a", "dataset": "reg", "by": ["district"]},
    "right": {"node": "b", "dataset": "svy", "by": ["employment"]},
    "linkage": {"method": "fuzzy", "fields": synthetic.JOB_FIELDS},
    "domains": {"district": ["d1"], "employment": ["e"]},
}
KEY, OTHER = bytes(range(32)), bytes(32)


def test_fuzzy_job_parses_and_reads_the_linkage_columns():
    job = parse({k: v for k, v in JOB.items() if k != "kind"})
    assert job.linkage.fuzzy and job.linkage.threshold == 0.9 and job.left.key is None
    assert job.left.columns == ["surname", "given_name", "birth_date", "sex", "street", "district"]
    assert job.linkage.fields[2].left_format == "%d.%m.%Y"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda j: j["left"].update(key="id"), "no `key` with method"),
        (lambda j: j["linkage"].update(threshold=1.2), "threshold"),
        (lambda j: j["linkage"]["fields"][0].update(kind="soundex"), "kind"),
        (lambda j: j["linkage"]["fields"][0].update(left_format="%Y"), "date"),
        (lambda j: j["linkage"].update(fields=[]), "fields"),
        (lambda j: j["linkage"].update(method="magic"), "method"),
    ],
)
def test_bad_linkage_tables_are_refused(change, message):
    job = copy.deepcopy({k: v for k, v in JOB.items() if k != "kind"})
    change(job)
    with pytest.raises(JobError, match=message):
        parse(job)


def test_exact_jobs_are_unchanged():
    job = copy.deepcopy({k: v for k, v in JOB.items() if k not in ("kind", "linkage")})
    job["left"]["key"] = job["right"]["key"] = "id"
    parsed = parse(job)
    assert not parsed.linkage.fuzzy and parsed.left.columns == ["id", "district"]


@pytest.mark.parametrize(
    "variants",
    [
        ["Олександр", "Oleksandr", "Olexandr", "OLEKSANDR "],
        ["Юрій", "Yuriy", "Iurii", "Jurij"],
        ["Григорій", "Hryhoriy", "Grigoriy"],
    ],
)
def test_transliteration_variants_normalise_alike(variants):
    assert len({fuzzy.normalize_name(v) for v in variants}) == 1


def test_russian_spelling_stays_close_not_equal():
    a, b = fuzzy.normalize_name("Олександра"), fuzzy.normalize_name("Aleksandra")
    assert a != b and fuzzy.skeleton(a) == fuzzy.skeleton(b)


@pytest.mark.parametrize(
    "variants",
    [["Микола", "Nikolay", "Николай", "Mykola"], ["Олена", "Elena", "Елена"], ["Анна", "Hanna"]],
)
def test_russian_forms_of_given_names_are_folded_by_the_variant_table(variants):
    assert len({fuzzy.normalize_name(v) for v in variants}) == 1


def test_soft_sign_and_ts_c_spellings_normalise_alike():
    same = ["вул. Козацька, 5", "Kozatska St, 5", "Kozac'ka 5", "kozacka 5"]
    assert len({fuzzy.normalize_text(v) for v in same}) == 1
    assert fuzzy.normalize_name("Хрещатик") == fuzzy.normalize_name("Hreschatik")


def test_bad_values_are_missing_evidence():
    parse_date = fuzzy.normalizer(synthetic_field("date", "%d.%m.%Y"), "left")
    column = pa.array(["31.02.1990", "", None, "12.05.1990", "not a date"], type=pa.string())
    assert fuzzy.normalize_column(column, parse_date).to_pylist() == [
        None, None, None, "19900512", None,
    ]  # fmt: skip
    assert fuzzy.normalize_name("  --  ") is None
    assert fuzzy.normalize_text("вул. Шевченка, 12") == fuzzy.normalize_text("Shevchenka St 12")


def synthetic_field(kind: str, fmt: str = "%Y-%m-%d"):
    from jointstats.protocols.linked.job import LinkField

    return LinkField("x", "y", kind, fmt, fmt)


def _date_level(a: str, b: str) -> int:
    tags = fuzzy.date_tags([a, b], KEY)
    return int(compare.date_levels(tags[:1], tags[1:], np.array([0]), np.array([0]))[0])


def test_date_tolerance():
    assert _date_level("19900512", "19900512") == 3
    assert _date_level("19900512", "19901205") == 2  # day and month swapped
    assert _date_level("19900512", "19910512") == 1  # one digit
    assert _date_level("19900512", "19850101") == 0
    tags = fuzzy.date_tags([None, "19900512"], KEY)
    assert compare.date_levels(tags[:1], tags[1:], np.array([0]), np.array([0]))[0] == -1


def test_encodings_agree_under_one_key_and_differ_under_another():
    names = pa.array(["oleksandr", None, "olena"], type=pa.string())
    one = fuzzy.encode_field(names, "name", KEY, flip=0.0)
    again = fuzzy.encode_field(names, "name", KEY, flip=0.0)
    other = fuzzy.encode_field(names, "name", OTHER, flip=0.0)
    assert (one == again).all() and not (one[0] == other[0]).all()
    assert not one[1].any()  # missing: all zero
    flipped = fuzzy.encode_field(names, "name", KEY, flip=fuzzy.FLIP)
    assert not (flipped[0] == one[0]).all()  # hardened: equal names, different filters
    levels = compare.dice_levels(one, flipped, np.array([0, 0]), np.array([0, 2]))
    assert levels[0] >= 2 > levels[1]  # still close to itself, far from another name
    tags = fuzzy.keyed_tags(["m", "m", None], KEY)
    assert tags[0] == tags[1] != 0 and tags[2] == 0
    assert fuzzy.keyed_tags(["m"], OTHER)[0] != tags[0]


def test_em_recovers_known_parameters():
    rng = np.random.default_rng(5)
    m_true, u_true = np.array([0.05, 0.15, 0.8]), np.array([0.7, 0.25, 0.05])
    matches, others = 2_000, 20_000
    gamma = np.concatenate(
        [rng.choice(3, (matches, 3), p=m_true), rng.choice(3, (others, 3), p=u_true)]
    ).astype(np.int8)
    random = rng.choice(3, (50_000, 3), p=u_true).astype(np.int8)
    u = [match._frequencies(random[:, f], 3) for f in range(3)]
    pass_of = np.ones((len(gamma), 3), dtype=bool)
    model = match.estimate(gamma, u, [3, 3, 3], pass_of, [{0}, {1}, {2}], len(gamma))
    for f in range(3):
        assert np.abs(model.m[f] - m_true).max() < 0.03
    assert abs(model.share * len(gamma) - matches) < 0.05 * matches
    p = match.probabilities(gamma, model)
    assert (p[:matches] > 0.5).mean() > 0.85 and (p[matches:] > 0.5).mean() < 0.03


def test_assignment_is_one_to_one_and_greedy_by_probability():
    i = np.array([0, 0, 1, 1, 2])
    j = np.array([0, 1, 0, 1, 2])
    p = np.array([0.95, 0.99, 0.97, 0.6, 0.85])
    chosen = match.assign(i, j, p, 0.9)
    pairs = {(int(i[k]), int(j[k])) for k in chosen}
    assert pairs == {(0, 1), (1, 0)}  # (2, 2) is below the threshold, (1, 1) conflicts


def test_quality_figures_round_trip_and_are_checked():
    p = np.array([0.95, 0.99, 0.999])
    figures = match.quality(p, 0.98, 0.9)
    meta = match.quality_metadata(figures, 0.9, 3)
    assert meta["estimated_false_match_rate"] == pytest.approx(np.mean(1 - p), abs=1e-6)
    assert sum(meta["probability_histogram"]["counts"]) == 3
    assert match.quality_metadata(figures, 0.9, 4) is None  # histogram must add up to n
    bad = figures.copy()
    bad[0] = 2 * match.PPM
    assert match.quality_metadata(bad, 0.9, 3) is None


def test_blocking_never_compares_all_pairs():
    data = synthetic.make(registry=3000, survey=3000, shared=2000, errors=0.1)
    job = parse({k: v for k, v in JOB.items() if k != "kind"})
    encoded = {}
    for side, frame in (("left", data.registry), ("right", data.survey)):
        columns = []
        for field in job.linkage.fields:
            raw = frame[getattr(field, side)].tolist()
            values = pa.array([v if isinstance(v, str) and v else None for v in raw], pa.string())
            columns.append(fuzzy.normalize_column(values, fuzzy.normalizer(field, side)))
        encoded[side] = fuzzy.blocking_keys(columns, list(job.linkage.fields), KEY)
    i, j = compare.candidates(encoded["left"], encoded["right"])
    assert len(i) < 0.02 * 3000 * 3000
    left_ids, right_ids = data.registry["record_id"].to_numpy(), data.survey["record_id"].to_numpy()
    found = set(zip(left_ids[i], right_ids[j], strict=True))
    true = set(zip(data.truth["registry_id"], data.truth["survey_id"], strict=True))
    assert len(found & true) / len(true) > 0.98


def test_blip_flips_each_bit_with_the_stated_rate():
    names = pa.array(["oleksandr"] * 2000 + [None], pa.string())
    plain = fuzzy.encode_field(names, "name", KEY, flip=0.0)
    flipped = fuzzy.encode_field(names, "name", KEY, flip=fuzzy.FLIP)
    changed = np.bitwise_count(plain ^ flipped).sum(1)
    assert changed[-1] == 0 and flipped[-1].sum() == 0  # a missing value stays all zero
    rate = changed[:-1].mean() / fuzzy.BLOOM_BITS
    assert abs(rate - fuzzy.FLIP) < 0.1 * fuzzy.FLIP


def test_blocking_takes_the_smallest_blocks_up_to_the_budget(monkeypatch):
    n = 200
    common = np.full((n, 1), 7, dtype=np.uint64)  # one block of n x n pairs: not selective
    own = (np.arange(n, dtype=np.uint64) * 2 + 1)[:, None]  # n blocks of one pair each
    left, right = np.hstack([common, own]), np.hstack([common, own])
    monkeypatch.setattr(compare, "PAIRS_PER_RECORD", 10)
    i, j = compare.candidates(left, right)
    assert (i == j).all() and len(i) == n  # the n x n block went first
    monkeypatch.setattr(compare, "PAIRS_PER_RECORD", n + 1)
    assert len(compare.candidates(left, right)[0]) == n * n


def test_comparison_vectors_are_counted_by_pattern():
    gamma = np.random.default_rng(3).integers(-1, 4, (5000, 5)).astype(np.int8)
    distinct, counts, inverse = compare.patterns(gamma)
    assert (distinct[inverse] == gamma).all() and counts.sum() == len(gamma)
    assert len(distinct) == len({tuple(row) for row in gamma.tolist()})


def _residual_model() -> tuple[match.Model, match.Background]:
    m = [np.array([0.05, 0.05, 0.1, 0.8])] * 2
    u = [np.array([0.9, 0.06, 0.03, 0.01])] * 2
    missing = [np.array([0.1, *(0.9 * u[0])])] * 2  # index 0: missing
    return match.Model(m, u, 1e-4), match.Background(u, missing)


def test_residual_links_a_lone_pattern_but_not_disagreement_or_rivals():
    model, background = _residual_model()
    gamma = np.array([[3, -1]] * 4 + [[3, 0]] * 4, dtype=np.int8)
    nothing = match.Cross(np.zeros((0, 2), dtype=np.int8), 1.0)
    p = match.residual(gamma, model, background, 100.0, nothing)
    # (3, missing): 4 seen, 100 x 2 x 0.009 x 0.1 = 0.18 expected by chance
    assert p[:4] == pytest.approx(1 - 0.18 / 4) and (p[4:] == 0).all()
    i, j = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2])  # right record 2 has two rivals
    assert match._shared_out(i, j, p[:4]).tolist() == pytest.approx(
        [p[0], p[0], p[0] / 2, p[0] / 2]
    )
    common = match.Cross(np.array([[3, -1]] * 50, dtype=np.int8), 1000.0)
    assert (match.residual(gamma, model, background, 100.0, common)[:4] == 0).all()

"""The public threshold table of the in-MPC discrete Laplace sampler gives the right law."""

from __future__ import annotations

import decimal
import math
from fractions import Fraction

import numpy as np
import pytest

from jointstats.protocols.disclosure import NOISE_BITS, laplace_thresholds, noise_delta


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0])
def test_threshold_table_maps_uniform_bits_to_discrete_laplace(epsilon: float) -> None:
    bound, thresholds = laplace_thresholds(epsilon)
    alpha = math.exp(-epsilon)
    assert alpha**bound <= 2.0**-39  # truncation mass
    uniform = np.random.default_rng(5).integers(0, 1 << NOISE_BITS, 400_000, dtype=np.int64)
    noise = (
        np.searchsorted(np.asarray(thresholds), uniform, side="right") - bound
    )  # = -B + #{T_j <= U}
    for x in range(-3, 4):
        expected = (1 - alpha) / (1 + alpha) * alpha ** abs(x)
        assert abs(np.mean(noise == x) - expected) < 4 * math.sqrt(expected / len(noise)) + 1e-4
    variance = 2 * alpha / (1 - alpha) ** 2
    assert np.var(noise) == pytest.approx(variance, rel=0.05)


def _exact_law(epsilon: float) -> tuple[int, dict[int, Fraction]]:
    """P(X = x) of X = -B + #{j : U >= T_j}, U uniform on [0, 2^L): (T_j - T_{j-1}) / 2^L."""
    bound, thresholds = laplace_thresholds(epsilon)
    edges = [0, *thresholds, 1 << NOISE_BITS]
    law = {
        x: Fraction(edges[i + 1] - edges[i], 1 << NOISE_BITS)
        for i, x in enumerate(range(-bound, bound + 1))
    }
    return bound, law


@pytest.mark.parametrize("epsilon", [0.05, 0.5, 1.0, 2.0, 10.0])
def test_the_sampler_is_the_folded_discrete_laplace_and_meets_its_delta(epsilon: float) -> None:
    bound, law = _exact_law(epsilon)
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        alpha = (-decimal.Decimal(epsilon)).exp()
        e_eps = decimal.Decimal(epsilon).exp()

        def pmf(x: int) -> decimal.Decimal:  # the discrete Laplace, not truncated
            return (1 - alpha) / (1 + alpha) * alpha ** abs(x)

        def exact(p: Fraction) -> decimal.Decimal:
            return decimal.Decimal(p.numerator) / decimal.Decimal(p.denominator)

        endpoint = alpha**bound / (1 + alpha)  # the tail folded onto -B and onto B
        unit = decimal.Decimal(2) ** -NOISE_BITS
        # support exactly [-B, B], symmetric, each point within 2^-L of the folded law
        assert sum(law.values()) == 1
        assert all(p > 0 for p in law.values()), "a value of [-B, B] never occurs"
        assert all(law[x] == law[-x] for x in law)
        for x, p in law.items():
            target = endpoint if abs(x) == bound else pmf(x)
            assert abs(exact(p) - target) <= unit, x
        # (epsilon, delta)-DP for counts: hockey-stick divergence of X + 1 from X
        hockey = sum(
            max(decimal.Decimal(0), exact(law[x]) - e_eps * exact(law.get(x - 1, Fraction(0))))
            for x in law
        )
        stated = decimal.Decimal(noise_delta(epsilon))
        assert hockey <= stated
        assert stated < decimal.Decimal(2) ** -38
        # and the law is within that delta (total variation) of the untruncated one
        l1 = sum(abs(exact(law[x]) - pmf(x)) for x in law) + 2 * alpha * endpoint
        assert l1 / 2 <= stated


def test_a_too_small_epsilon_is_refused_rather_than_losing_values() -> None:
    with pytest.raises(ValueError, match="too small"):
        laplace_thresholds(1e-5)

"""The public threshold table of the in-MPC discrete Laplace sampler gives the right law."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jointstats.protocols.disclosure import NOISE_BITS, laplace_thresholds


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

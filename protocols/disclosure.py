"""Disclosure control inside MPC (DESIGN §5.3): building blocks for protocol MPC programs.

Everything here works on secret-shared values (lists of MPyC secure integers); nothing is
opened. Callers open only the final suppression pattern and the released values.

- `discrete_laplace_noise`: differential-privacy noise drawn inside MPC. A uniform L-bit
  integer U (L = 56) is built from PRSS random bits (each party's keys contribute, so no t
  colluding parties know it) and mapped through the inverse CDF of the discrete Laplace
  (two-sided geometric, P(x) proportional to a^|x|, a = e^-epsilon) with a public threshold
  table 0 < T_0 < ... < T_{2B-1} < 2^L: X = -B + #{j : U >= T_j}, so P(X = -B) = T_0 / 2^L,
  P(X = -B + j) = (T_j - T_{j-1}) / 2^L and P(X = B) = 1 - T_{2B-1} / 2^L. No floating point
  touches secret data. The tails are folded onto the endpoints (P(X = -B) = P(X = B) =
  a^B / (1 + a) <= 2^-40 before rounding); T_j = round(F(j - B) * 2^L) is computed in exact
  decimal arithmetic for the lower half and mirrored (T_{2B-1-j} = 2^L - T_j), so X is
  symmetric, every value of [-B, B] occurs and each P(X = x) is within 2^-L of the folded law.
  For counts (sensitivity 1) the mechanism is (epsilon, delta)-DP with (`noise_delta`)
      delta <= 2 a^B / (1 + a) + (1 + e^epsilon) * 2B * 2^-L
  (the first term: the value -B occurs on one side only and the folded endpoint mass; the
  second: a point's probability is off by at most 2^-L, which counts once on the left side of
  P[x] <= e^epsilon P[x - 1] and e^epsilon times on the right). That is below 2^-38 for
  0.001 <= epsilon <= 10 (2^-39.9 + 2^-48.3 at epsilon = 1).
- `primary_flags`: s = [count < k] (zero cells released only with release_zeros).
- `secondary_suppression`: with released margins, a row or column whose margin is released and
  which holds exactly one suppressed cell gets its smallest other cell suppressed too;
  repeated for a fixed number of rounds (rows + columns, data-independent) so that the number
  of iterations leaks nothing.
"""

from __future__ import annotations

import decimal
import math
from typing import Any

NOISE_BITS = 56  # U is uniform in [0, 2^56): SecInt(64) holds it and its comparisons
TAIL_LOG2 = 40  # truncation: tail mass beyond +-B at most 2^-40 on each side


def _big(value: Any) -> int:
    """Added to suppressed cells so that the minimum picks an unsuppressed one: a quarter of
    the secure type's range (2^30 for SecInt(32)), above any count it can hold in a table."""
    return 1 << (type(value).bit_length - 2)


def noise_bound(epsilon: float, sensitivity: float = 1.0) -> int:
    """B such that P(X < -B) = P(X > B) <= 2^-TAIL_LOG2 for the discrete Laplace of scale
    sens/eps (that tail is a^(B+1) / (1 + a) <= a^B)."""
    return max(1, math.ceil(TAIL_LOG2 * math.log(2) * sensitivity / epsilon))


def laplace_thresholds(epsilon: float, sensitivity: float = 1.0) -> tuple[int, list[int]]:
    """B and the public table T_0 < ... < T_{2B-1} with P(X <= j - B) = T_j / 2^L.

    T_j = round(F(j - B) * 2^L) for j < B, where F(k) = a^-k / (1 + a) (k < 0) is the CDF of
    the discrete Laplace (its lower tail folded onto -B), computed in exact decimal arithmetic;
    the upper half mirrors it, T_{2B-1-j} = 2^L - T_j, so the law is symmetric. Raises
    ValueError when epsilon is so small that a value of [-B, B] would get no 2^-L unit."""
    bound = noise_bound(epsilon, sensitivity)
    scale = 1 << NOISE_BITS
    rate_f = epsilon / sensitivity  # smallest point masses, -B and -B + 1, in 2^-L units:
    smallest = math.exp(-rate_f * (bound - 1)) * min(math.exp(-rate_f), -math.expm1(-rate_f))
    if smallest * scale / 2 < 2:
        raise ValueError(f"epsilon {epsilon:g} is too small for the {NOISE_BITS}-bit sampler")
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        rate = decimal.Decimal(epsilon) / decimal.Decimal(sensitivity)
        denominator = 1 + (-rate).exp()
        lower = [
            int(((-rate * (bound - j)).exp() / denominator * scale).to_integral_value())
            for j in range(bound)
        ]  # round half even, on an exact decimal value: the same at every party
    thresholds = lower + [scale - t for t in reversed(lower)]
    if any(b <= a for a, b in zip([0, *thresholds], [*thresholds, scale], strict=True)):
        raise ValueError(f"epsilon {epsilon:g} is too small for the {NOISE_BITS}-bit sampler")
    return bound, thresholds


def noise_delta(epsilon: float) -> float:
    """The delta of the sampler for counts (sensitivity 1): 2 a^B / (1 + a) for the folded,
    truncated tails plus (1 + e^eps) * 2B * 2^-L for the rounding of the thresholds."""
    bound, alpha = noise_bound(epsilon), math.exp(-epsilon)
    return 2 * alpha**bound / (1 + alpha) + (1 + math.exp(epsilon)) * 2 * bound / 2**NOISE_BITS


def discrete_laplace_noise(mpc: Any, secint: type, n: int, epsilon: float) -> list[Any]:
    """n secret samples of discrete Laplace noise with scale 1/epsilon (counts), in [-B, B]."""
    if secint.bit_length < NOISE_BITS + 2:
        raise ValueError(f"DP noise needs a secure integer of at least {NOISE_BITS + 2} bits")
    bound, thresholds = laplace_thresholds(epsilon)
    powers = [1 << i for i in range(NOISE_BITS)]
    samples = []
    for _ in range(n):
        bits = mpc.random_bits(secint, NOISE_BITS)
        uniform = mpc.in_prod(bits, [secint(p) for p in powers])
        above = [uniform >= t for t in thresholds]
        samples.append(mpc.sum(above) - bound)
    return samples


def primary_flags(counts: list[Any], k: int, release_zeros: bool) -> list[Any]:
    """Secret 0/1 per cell: 1 = suppressed."""
    flags = [c < k for c in counts]
    if release_zeros:
        flags = [f * (1 - (c == 0)) for f, c in zip(flags, counts, strict=True)]
    return flags


def _or(a: Any, b: Any) -> Any:
    return a + b - a * b


def _line_pass(
    mpc: Any,
    lines: list[list[int]],
    counts: list,
    flags: list,
    open_margin: list,
    avoid: list | None = None,
) -> list:
    """For each line (row or column) with a released margin and exactly one suppressed cell,
    suppress the smallest unsuppressed cell(s) of that line, preferring cells not in `avoid`
    (released zeros: suppressing a known zero would protect nothing)."""
    flags = list(flags)
    for line, released in zip(lines, open_margin, strict=True):
        if len(line) < 2:
            continue
        suppressed = mpc.sum([flags[i] for i in line])
        exactly_one = (suppressed == 1) * released
        big = _big(counts[line[0]])
        masked = [counts[i] + (_or(flags[i], avoid[i]) if avoid else flags[i]) * big for i in line]
        smallest = mpc.min(masked)
        for i, value in zip(line, masked, strict=True):
            flags[i] = _or(flags[i], (value == smallest) * exactly_one)
    return flags


def secondary_suppression(
    mpc: Any,
    counts: list,
    flags: list,
    shape: tuple[int, int],
    k: int,
    avoid: list | None = None,
) -> tuple[list, list, list, Any]:
    """Return secret flags (1 = suppressed) for cells (row-major), row totals, column totals
    and the grand total. Totals below k are suppressed; the totals of a dimension form a line
    of their own whose margin is the grand total, so one suppressed total is protected too."""
    rows, cols = shape
    row_lines = [[r * cols + c for c in range(cols)] for r in range(rows)]
    col_lines = [[r * cols + c for r in range(rows)] for c in range(cols)]
    row_totals = [mpc.sum([counts[i] for i in line]) for line in row_lines]
    col_totals = [mpc.sum([counts[i] for i in line]) for line in col_lines]
    grand_flag = mpc.sum(counts) < k
    row_flags = [t < k for t in row_totals]
    col_flags = [t < k for t in col_totals]
    for _ in range(rows + cols + 2):
        flags = _line_pass(mpc, row_lines, counts, flags, [1 - f for f in row_flags], avoid)
        flags = _line_pass(mpc, col_lines, counts, flags, [1 - f for f in col_flags], avoid)
        row_flags = _line_pass(mpc, [list(range(rows))], row_totals, row_flags, [1 - grand_flag])
        col_flags = _line_pass(mpc, [list(range(cols))], col_totals, col_flags, [1 - grand_flag])
    return flags, row_flags, col_flags, grand_flag

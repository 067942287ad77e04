"""The Mann-Whitney U test against published values and against brute-force permutation counts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from teswap.reporting.errors import ReportError
from teswap.reporting.mannwhitney import mann_whitney_u, smallest_p, u_counts


def _u(x, y) -> float:
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y)


def _permutation_us(x, y) -> list[float]:
    """U of the first group for every split of the pooled values into groups of len(x) and len(y)."""
    pooled = list(x) + list(y)
    out = []
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        rest = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        out.append(_u([pooled[i] for i in chosen], rest))
    return out


def test_matches_scipy_documentation_example():
    # scipy.stats.mannwhitneyu docs (Conover's males/females ages): U = 17, exact p = 0.1111,
    # asymptotic p = 0.11134688653314041 (continuity-corrected normal approximation).
    result = mann_whitney_u([19, 22, 16, 29, 24], [20, 11, 17, 12])
    assert result.u == 17 and result.method == "exact"
    assert result.p_value == pytest.approx(1 / 9, abs=1e-12)
    tied = mann_whitney_u([19, 22, 16, 29, 24, 24], [20, 11, 17, 12, 24])  # a tie forces the normal form
    assert tied.method == "normal" and 0 < tied.p_value < 1


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_equals_brute_force_permutation_p(seed):
    rng = np.random.default_rng(seed)
    m, n = rng.integers(2, 7, size=2)
    x, y = rng.normal(size=m), rng.normal(loc=0.8, size=n)
    u = _u(x, y)
    us = _permutation_us(x, y)
    lower, upper = sum(v <= u for v in us), sum(v >= u for v in us)
    expected = min(1.0, 2 * min(lower, upper) / len(us))
    result = mann_whitney_u(x, y)
    assert result.method == "exact" and result.u == u
    assert result.p_value == pytest.approx(expected, rel=1e-12)


def test_u_distribution_counts_every_ordering():
    for m, n in [(1, 1), (3, 4), (5, 5), (7, 3)]:
        counts = u_counts(m, n)
        assert sum(counts) == math.comb(m + n, m) and counts == counts[::-1] and len(counts) == m * n + 1
    assert u_counts(2, 2) == (1, 1, 2, 1, 1)  # orderings of xxyy: U = 0,1,2,2,3,4


def test_tie_corrected_variance_equals_permutation_variance():
    # The normal approximation's sigma with ties must be the exact permutation sd of U; recover it
    # from the p-value the function returns and compare.
    x, y = [1, 2, 2, 3, 3, 3, 5], [2, 3, 4, 4, 5, 5]
    us = np.array(_permutation_us(x, y))
    result = mann_whitney_u(x, y)
    assert result.method == "normal" and result.u == _u(x, y)
    z = (abs(result.u - len(x) * len(y) / 2) - 0.5) / us.std()
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)


def test_normal_approximation_is_close_to_exact_for_moderate_samples():
    for seed in range(5):  # 30 vs 30: p from ~1e-3 to ~0.07; the approximation is looser in the far tail
        rng = np.random.default_rng(seed)
        x, y = rng.normal(size=30), rng.normal(loc=0.5, size=30)
        exact, approx = mann_whitney_u(x, y), mann_whitney_u(x, y, method="normal")
        assert exact.method == "exact" and approx.method == "normal" and exact.u == approx.u
        assert abs(approx.p_value - exact.p_value) < 1e-3 and approx.p_value == pytest.approx(exact.p_value, rel=0.3)


def test_identical_samples_and_bad_input():
    assert mann_whitney_u([1.0, 1.0, 1.0], [1.0, 1.0]).p_value == 1.0
    assert smallest_p(5, 5) == pytest.approx(2 / 252) and smallest_p(10, 10) < 2e-5
    with pytest.raises(ReportError, match="non-empty"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ReportError, match="no ties"):
        mann_whitney_u([1.0, 2.0], [2.0, 3.0], method="exact")
    with pytest.raises(ReportError, match="finite"):
        mann_whitney_u([1.0, float("nan")], [1.0])

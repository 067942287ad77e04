"""The two-sided Mann-Whitney U rank test (what asv uses to call a benchmark changed), numpy only.

Exact p-values (the permutation distribution of U, counted as Gaussian binomial coefficients) when
there are no ties and the samples are small enough to count; otherwise the normal approximation
with tie correction and continuity correction. Both agree with scipy.stats.mannwhitneyu's "exact"
and "asymptotic" methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from teswap.reporting.errors import ReportError

# Count the exact distribution up to this many (x, y) pairs: 50 x 50 samples take ~0.1 s once
# (then cached); beyond it the normal approximation is within ~1e-3 of the exact p (it is looser,
# relative to p, in the far tail, where either is far below any threshold we use).
EXACT_MAX_PAIRS = 2500


@dataclass(frozen=True, kw_only=True)
class MannWhitneyResult:
    """U of the first sample (pairs x > y, ties counting 1/2) and the two-sided p-value."""

    u: float
    p_value: float
    method: str  # "exact" or "normal"


def average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks with ties given their average rank, and the size of every tie group."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    del unique
    ends = np.cumsum(counts)
    group_rank = ends - (counts - 1) / 2.0
    return group_rank[inverse], counts


@lru_cache(maxsize=128)
def u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the C(m+n, m) orderings give U = 0, 1, ..., m*n (no ties)."""
    m, n = min(m, n), max(m, n)
    size = m * n + 1
    poly = [0] * size
    poly[0] = 1
    # [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i); after step i the polynomial is
    # [n+i choose i]_q, of degree i*n <= m*n, so truncating to m*n+1 coefficients loses nothing.
    for i in range(1, m + 1):
        shift = n + i
        for k in range(size - 1, shift - 1, -1):
            poly[k] -= poly[k - shift]
        for k in range(i, size):
            poly[k] += poly[k - i]
    return tuple(poly)


def _exact_p(u: float, m: int, n: int) -> float:
    counts = u_counts(m, n)
    k = int(round(u))
    lower, upper = sum(counts[: k + 1]), sum(counts[k:])
    return min(1.0, 2 * min(lower, upper) / math.comb(m + n, m))


def _normal_p(u: float, m: int, n: int, tie_counts: np.ndarray) -> float:
    total = m + n
    ties = float(np.sum(tie_counts.astype(float) ** 3 - tie_counts))
    variance = m * n / 12.0 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:
        return 1.0  # every value tied: no evidence of any difference
    z = (abs(u - m * n / 2.0) - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))


def mann_whitney_u(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                   method: str = "auto") -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test of `x` against `y`; method "auto", "exact" or "normal"."""
    if method not in ("auto", "exact", "normal"):
        raise ReportError(f"method must be auto, exact or normal, got {method!r}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or y.ndim != 1 or len(x) == 0 or len(y) == 0:
        raise ReportError("Mann-Whitney U needs two non-empty 1-d samples")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ReportError("Mann-Whitney U samples must be finite (no NaN or inf)")
    m, n = len(x), len(y)
    ranks, tie_counts = average_ranks(np.concatenate([x, y]))
    u = float(ranks[:m].sum() - m * (m + 1) / 2.0)
    no_ties = bool(np.all(tie_counts == 1))
    if method == "exact" and not no_ties:
        raise ReportError("the exact Mann-Whitney distribution assumes no ties; use method='normal'")
    if method == "exact" or (method == "auto" and no_ties and m * n <= EXACT_MAX_PAIRS):
        return MannWhitneyResult(u=u, p_value=_exact_p(u, m, n), method="exact")
    return MannWhitneyResult(u=u, p_value=_normal_p(u, m, n, tie_counts), method="normal")


def smallest_p(m: int, n: int) -> float:
    """The smallest two-sided p the exact test can give for these sample sizes (complete separation)."""
    return min(1.0, 2 / math.comb(m + n, m))

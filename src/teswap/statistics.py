"""How sure a ratio of two timings is: paired per-round ratios with a bootstrap CI, the unpaired
fallback, and the spread figures the noise guard reads (coefficient of variation, drift).

A speedup is baseline time / measured time (above 1: the measured model is faster). When the two
were timed in interleaved rounds, each round gives one ratio of the two sides' median times in that
round; slow drift and a busy neighbour move both sides of a round alike, so they cancel in its ratio.
The estimate is the median over rounds of those ratios, and its confidence interval a percentile
bootstrap over rounds (rounds resampled whole, so the pairing is kept). Timings taken apart (separate
cells) only have the unpaired interval: each side's samples resampled on its own, ratio of medians.
It covers the noise inside each cell, not drift between them. The bootstrap's generator is seeded,
so the same samples always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
IQR_PER_SIGMA = 1.349  # a normal distribution's interquartile range, in standard deviations
MIN_ROUNDS_FOR_CI = 3  # below this a bootstrap over rounds has almost nothing to resample
PAIRED_METHOD = "median over rounds of (baseline median / measured median) per round; percentile bootstrap over rounds"
UNPAIRED_METHOD = "baseline median / measured median; percentile bootstrap of each side's samples on its own"


@dataclass(frozen=True, kw_only=True)
class RatioEstimate:
    """A ratio (baseline time / measured time) with its confidence interval (None when too few data)."""

    estimate: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    method: str
    count: int  # rounds (paired) or the smaller side's samples (unpaired)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def contains(self, value: float) -> bool:
        """Whether `value` lies inside the interval (False when there is none)."""
        return self.ci_low is not None and self.ci_high is not None and self.ci_low <= value <= self.ci_high

    def relative_half_width(self) -> float | None:
        """Half the interval's width over the estimate: 0.02 reads as ±2 %."""
        if self.ci_low is None or self.ci_high is None or not self.estimate > 0:
            return None
        return (self.ci_high - self.ci_low) / 2 / self.estimate


def _generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def round_ratios(baseline_rounds: Sequence[Sequence[float]], measured_rounds: Sequence[Sequence[float]]) -> np.ndarray:
    """Per round: the baseline's median time over the measured side's median time."""
    if len(baseline_rounds) != len(measured_rounds):
        raise ValueError(f"paired rounds differ in number: {len(baseline_rounds)} vs {len(measured_rounds)}")
    pairs = [(b, m) for b, m in zip(baseline_rounds, measured_rounds, strict=True) if len(b) and len(m)]
    return np.array([np.median(b) / np.median(m) for b, m in pairs], dtype=float)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def paired_ratio(baseline_rounds: Sequence[Sequence[float]], measured_rounds: Sequence[Sequence[float]], *,
                 confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> RatioEstimate:
    """The median per-round ratio, with a percentile bootstrap CI over whole rounds."""
    ratios = round_ratios(baseline_rounds, measured_rounds)
    if ratios.size == 0:
        raise ValueError("no paired rounds with samples on both sides")
    estimate = float(np.median(ratios))
    if ratios.size < MIN_ROUNDS_FOR_CI:
        return RatioEstimate(estimate=estimate, ci_low=None, ci_high=None, confidence=confidence,
                             method=PAIRED_METHOD, count=int(ratios.size))
    picks = _generator(seed).integers(0, ratios.size, size=(resamples, ratios.size))
    low, high = _percentiles(np.median(ratios[picks], axis=1), confidence)
    return RatioEstimate(estimate=estimate, ci_low=low, ci_high=high, confidence=confidence, method=PAIRED_METHOD,
                         count=int(ratios.size))


def _bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    return np.median(samples[rng.integers(0, samples.size, size=(resamples, samples.size))], axis=1)


def independent_ratio(baseline_samples: Sequence[float], measured_samples: Sequence[float], *,
                      confidence: float = CONFIDENCE, resamples: int = 1000, seed: int = 0) -> RatioEstimate:
    """Ratio of the two sides' median times, each side bootstrapped on its own (timings taken apart)."""
    baseline, measured = np.asarray(baseline_samples, dtype=float), np.asarray(measured_samples, dtype=float)
    if baseline.size == 0 or measured.size == 0:
        raise ValueError("need samples on both sides")
    estimate = float(np.median(baseline) / np.median(measured))
    count = int(min(baseline.size, measured.size))
    if count < MIN_ROUNDS_FOR_CI:
        return RatioEstimate(estimate=estimate, ci_low=None, ci_high=None, confidence=confidence,
                             method=UNPAIRED_METHOD, count=count)
    rng = _generator(seed)
    ratios = _bootstrap_medians(baseline, resamples, rng) / _bootstrap_medians(measured, resamples, rng)
    low, high = _percentiles(ratios, confidence)
    return RatioEstimate(estimate=estimate, ci_low=low, ci_high=high, confidence=confidence, method=UNPAIRED_METHOD,
                         count=count)


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """A robust coefficient of variation: interquartile range / 1.349 / median (equal to std / mean for
    normal data, but one stray slow step does not make it); None for fewer than four values."""
    data = np.asarray(values, dtype=float)
    if data.size < 4:
        return None
    q1, median, q3 = np.quantile(data, [0.25, 0.5, 0.75])
    return float((q3 - q1) / IQR_PER_SIGMA / median) if median > 0 else None


def drift(samples_in_time_order: Sequence[float]) -> float | None:
    """Relative change of the median from the first third of the samples to the last third
    (+0.1: the end ran 10 % slower); None for fewer than six samples."""
    data = np.asarray(samples_in_time_order, dtype=float)
    third = data.size // 3
    if third < 2:
        return None
    first, last = float(np.median(data[:third])), float(np.median(data[-third:]))
    return last / first - 1 if first > 0 else None

"""Timing harness: statistics, the median's CI, the stopping rule, warm-up kept out of the samples."""

from __future__ import annotations

import statistics
import time

import pytest

from teswap.benchmark.errors import BenchConfigError
from teswap.benchmark.timing import (
    PerfCounterTimer,
    Timer,
    TimingPolicy,
    median_ci,
    sample,
    summarize,
    tokens_per_s,
    warm_up,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ReplayTimer(Timer):
    """Returns recorded step durations in turn and advances the fake clock by each."""

    name = "replay"

    def __init__(self, durations: list[float], clock: FakeClock) -> None:
        self.durations = durations
        self.clock = clock
        self.calls = 0

    def time(self, step) -> float:
        step()
        duration = self.durations[self.calls % len(self.durations)]
        self.calls += 1
        self.clock.now += duration
        return duration


def test_summary_statistics_known_answers():
    stats = summarize([float(x) for x in (7, 1, 10, 4, 2, 9, 3, 6, 8, 5)], warmup=2, stop_reason="ci", timer="t")
    assert stats.median_s == 5.5 and stats.min_s == 1.0 and stats.mean_s == 5.5
    assert stats.iqr_s == pytest.approx(7.75 - 3.25)  # inclusive quartiles, as numpy's default
    assert stats.std_s == pytest.approx(statistics.stdev(range(1, 11)))  # sample std (n - 1)
    assert stats.count == 10 and stats.warmup == 2
    assert stats.samples_s[:3] == [7.0, 1.0, 10.0]  # raw samples kept in the order taken


def test_single_sample_has_zero_spread_and_no_ci():
    stats = summarize([0.5], warmup=0, stop_reason="max_samples", timer="t")
    assert (stats.median_s, stats.iqr_s, stats.std_s, stats.ci_low_s, stats.ci_high_s) == (0.5, 0.0, 0.0, None, None)


def test_median_ci_uses_binomial_order_statistics():
    ordered = [float(i) for i in range(1, 101)]
    assert median_ci(ordered) == (40.0, 61.0)  # the textbook ranks for n = 100 at 95%
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # too few samples for a 95% interval


def test_constant_steps_stop_on_the_ci_after_min_samples():
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_samples=12, max_samples=1000, target_rel_ci=0.01, budget_s=100.0)
    stats = sample(lambda: None, policy, ReplayTimer([0.01], clock), clock=clock)
    assert stats.stop_reason == "ci" and stats.count == 12 and stats.median_s == 0.01


def test_noisy_steps_stop_when_the_budget_is_spent():
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_samples=10, max_samples=10_000, target_rel_ci=0.01, budget_s=3.0)
    stats = sample(lambda: None, policy, ReplayTimer([0.1, 0.2], clock), clock=clock)  # CI stays ±33%
    assert stats.stop_reason == "budget"
    assert stats.count == 20  # 10 × 0.1 + 10 × 0.2 = 3.0 s of samples
    assert stats.ci_low_s == 0.1 and stats.ci_high_s == 0.2


def test_max_samples_caps_the_loop():
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_samples=5, max_samples=30, target_rel_ci=1e-9, budget_s=1e9)
    stats = sample(lambda: None, policy, ReplayTimer([1.0, 2.0, 3.0], clock), clock=clock)
    assert stats.stop_reason == "max_samples" and stats.count == 30


def test_ci_tightens_with_more_samples_of_the_same_spread():
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_samples=10, max_samples=100_000, target_rel_ci=0.02, budget_s=1e9)
    spread = [0.75 + 0.5 * ((i * 37) % 101) / 100 for i in range(101)]  # ±25%, evenly over the range
    stats = sample(lambda: None, policy, ReplayTimer(spread, clock), clock=clock)
    assert stats.stop_reason == "ci" and 100 < stats.count < 2000
    assert (stats.ci_high_s - stats.ci_low_s) / 2 <= 0.02 * stats.median_s


def test_warm_up_steps_are_not_sampled():
    calls = []
    step = lambda: calls.append(1)  # noqa: E731
    import torch

    warm_up(step, 4, torch.device("cpu"))
    clock = FakeClock()
    stats = sample(step, TimingPolicy(warmup=4, min_samples=10, budget_s=1.0), ReplayTimer([0.01], clock),
                   clock=clock)
    assert len(calls) == 4 + stats.count and stats.warmup == 4


def test_perf_counter_timer_times_the_step():
    duration = PerfCounterTimer().time(lambda: time.sleep(0.02))
    assert duration >= 0.02


def test_tokens_per_s_is_derived_from_the_median():
    stats = summarize([0.1, 0.2, 0.4], warmup=0, stop_reason="ci", timer="t")
    assert tokens_per_s(1000, stats) == pytest.approx(5000.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup": -1}, "warmup"),
    ({"min_samples": 0}, "min_samples"),
    ({"min_samples": 10, "max_samples": 5}, "max_samples"),
    ({"target_rel_ci": 0.0}, "target_rel_ci"),
    ({"budget_s": 0.0}, "budget_s"),
])
def test_policy_rejects_bad_settings(kwargs, message):
    with pytest.raises(BenchConfigError, match=message):
        TimingPolicy(**kwargs)

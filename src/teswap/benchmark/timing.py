"""Timing one step: device-synchronised timers, warm-up kept out, repeats until the median is tight.

A sample is one step (one prefill forward or one training step). On CUDA it is the time between two
CUDA events recorded around the step, read after synchronising on the end event; on CPU it is
`time.perf_counter` around the step. Sampling stops at the first of: the median's 95% confidence
interval is within `target_rel_ci` of the median (after at least `min_samples`), the time budget is
spent, or `max_samples` are taken. Every raw sample is kept.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from teswap.benchmark.decode.token_clock import CudaEventTokenClock, HostTokenClock, TokenClock
from teswap.benchmark.errors import BenchConfigError

Step = Callable[[], object]
Clock = Callable[[], float]
STEP_TIME = "step_s"  # the timing every workload has: one whole step
# One step's timings by name, in seconds: STEP_TIME, phases timed inside the step (floats, each paired
# like the step time), and per-token series (lists, kept but not paired), e.g. a decode step's.
StepTimings = dict[str, float | list[float]]
Z_95 = 1.959963984540054  # two-sided 95% normal quantile


ORDERS = ("abba", "random")


@dataclass(frozen=True, kw_only=True)
class TimingPolicy:
    """How many warm-up steps, how steps are grouped into blocks and rounds, and when sampling may stop.

    Sample counts are per side. A paired cell stops once the speedup's CI is tight (half-width within
    `target_rel_ci` of the estimate, after `min_rounds`); a lone cell once its median's CI is.
    """

    warmup: int = 3
    min_samples: int = 10
    max_samples: int = 2000
    target_rel_ci: float = 0.02  # half-width of the 95% CI (median, or paired speedup), relative to it
    budget_s: float = 2.0  # wall time for sampling, checked after min_samples (and min_rounds)
    block_steps: int = 1  # timed steps per block: one model runs a whole block before the other's
    block_warmup: int = 0  # untimed steps at the start of every block (after a model moved onto the device)
    min_rounds: int = 8  # paired rounds before the speedup's CI may stop sampling
    order: str = "abba"  # blocks of a paired round: ABBA then BAAB, or a seeded shuffle of AABB ("random")

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.block_warmup < 0:
            raise BenchConfigError(f"warmup and block_warmup must be >= 0, got {self.warmup}, {self.block_warmup}")
        if not 1 <= self.min_samples <= self.max_samples:
            raise BenchConfigError(f"need 1 <= min_samples ({self.min_samples}) <= max_samples ({self.max_samples})")
        if not self.target_rel_ci > 0:
            raise BenchConfigError(f"target_rel_ci must be > 0, got {self.target_rel_ci}")
        if not self.budget_s > 0:
            raise BenchConfigError(f"budget_s must be > 0, got {self.budget_s}")
        if self.block_steps < 1 or self.min_rounds < 1:
            raise BenchConfigError(f"block_steps and min_rounds must be >= 1, got {self.block_steps}, "
                                   f"{self.min_rounds}")
        if self.order not in ORDERS:
            raise BenchConfigError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")


class Timer(ABC):
    """Times one call of a step, synchronising the device so the figure covers the work itself."""

    name: str

    @abstractmethod
    def time(self, step: Step) -> float:
        """Seconds the step took."""

    def token_clock(self) -> TokenClock:
        """The clock a step that times its own tokens (decode) marks them with: this timer's kind of clock."""
        return HostTokenClock()


class PerfCounterTimer(Timer):
    """Host wall clock; right for CPU tensors, where a returned op has finished."""

    name = "perf_counter"

    def time(self, step: Step) -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start


class CudaEventTimer(Timer):
    """CUDA events around the step on the current stream, read after the end event completes."""

    name = "cuda_events"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._tokens = CudaEventTokenClock(device)

    def token_clock(self) -> TokenClock:
        return self._tokens

    def time(self, step: Step) -> float:
        with torch.cuda.device(self.device):
            self._start.record()
            step()
            self._end.record()
            self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1e3  # elapsed_time is in ms


def timer_for(device: torch.device) -> Timer:
    return CudaEventTimer(device) if device.type == "cuda" else PerfCounterTimer()


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` (a no-op for CPU, whose ops return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True, kw_only=True)
class TimingStats:
    """Summary of the timed samples (seconds per step), with the raw samples."""

    median_s: float
    iqr_s: float
    mean_s: float
    std_s: float
    min_s: float
    count: int
    warmup: int
    samples_s: list[float] = field(repr=False)
    ci_low_s: float | None  # the median's 95% CI (order statistics); None below ~8 samples
    ci_high_s: float | None
    stop_reason: str  # "ci", "budget" or "max_samples"
    timer: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def median_ci(ordered: list[float], z: float = Z_95) -> tuple[float, float] | None:
    """Distribution-free CI of the median from sorted samples (binomial order statistics)."""
    n = len(ordered)
    half_width = z * math.sqrt(n) / 2
    low_rank = math.floor(n / 2 - half_width)  # 1-based ranks
    high_rank = math.ceil(1 + n / 2 + half_width)
    if low_rank < 1 or high_rank > n:
        return None
    return ordered[low_rank - 1], ordered[high_rank - 1]


def summarize(samples: list[float], *, warmup: int, stop_reason: str, timer: str) -> TimingStats:
    """Median, IQR (inclusive quartiles), mean, sample std, min and the median's CI."""
    if not samples:
        raise ValueError("no samples to summarize")
    ordered = sorted(samples)
    if len(samples) > 1:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        std = statistics.stdev(samples)
    else:
        q1 = q3 = ordered[0]
        std = 0.0
    ci = median_ci(ordered)
    return TimingStats(
        median_s=statistics.median(ordered), iqr_s=q3 - q1, mean_s=statistics.fmean(samples), std_s=std,
        min_s=ordered[0], count=len(samples), warmup=warmup, samples_s=list(samples),
        ci_low_s=ci[0] if ci else None, ci_high_s=ci[1] if ci else None, stop_reason=stop_reason, timer=timer,
    )


def warm_up(step: Step, count: int, device: torch.device) -> None:
    """Run `count` untimed steps (allocator, autotuning, FP8 scales settle), then synchronise."""
    for _ in range(count):
        step()
    synchronize(device)


def _median_of_sorted(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def ci_is_tight(ordered: list[float], target_rel_ci: float) -> bool:
    """Whether the median's 95% CI half-width is within `target_rel_ci` of the median (sorted input)."""
    ci = median_ci(ordered)
    if ci is None:
        return False
    median = _median_of_sorted(ordered)
    return median > 0 and (ci[1] - ci[0]) / 2 <= target_rel_ci * median


def sample(step: Step, policy: TimingPolicy, timer: Timer, *, clock: Clock = time.perf_counter) -> TimingStats:
    """Time steps until the median's CI is tight, the budget is spent or max_samples are taken."""
    samples: list[float] = []
    ordered: list[float] = []  # kept sorted as we go so the stopping check is cheap
    started = clock()
    while True:
        duration = timer.time(step)
        samples.append(duration)
        bisect.insort(ordered, duration)
        count = len(samples)
        if count >= policy.max_samples:
            reason = "max_samples"
            break
        if count >= policy.min_samples:
            if ci_is_tight(ordered, policy.target_rel_ci):
                reason = "ci"
                break
            if clock() - started >= policy.budget_s:
                reason = "budget"
                break
    return summarize(samples, warmup=policy.warmup, stop_reason=reason, timer=timer.name)


def tokens_per_s(tokens_per_step: int, stats: TimingStats) -> float:
    """Throughput at the median step time."""
    return tokens_per_step / stats.median_s

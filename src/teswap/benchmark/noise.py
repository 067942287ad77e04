"""The noise guard: is a measured cell stable enough to publish, and if not, why not.

Reasons are short, for table cells: "stock CV 23% > 15%" (the robust spread of a side's step times),
"te drift +14% (limit ±10%)" (its median from the first to the last third of its samples), "round
speedups CV 12% > 10%", "GPU clocks held down: sw_power_cap", "SM clock 1500-1980 MHz, spread 24% >
5%", "GPU 88 °C > 85 °C".

Checked on the timed rounds: each side's samples (coefficient of variation, drift from the first
third to the last), the paired rounds' speedups (their CV), and on a GPU the clocks read after every
block (a slowdown reason such as a power cap or thermal slowdown, the SM clock's spread, the
temperature). A cell that fails a check is measured again (`remeasure` times); if it still fails it
is kept, marked noisy, with every reason. Pairing keeps drift out of the speedup itself, so a noisy
mark says "this machine was not steady", which also makes the absolute figures (tokens/s) suspect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from teswap.benchmark.clocks import ClockLog
from teswap.benchmark.errors import BenchConfigError
from teswap.statistics import coefficient_of_variation, drift


@dataclass(frozen=True, kw_only=True)
class NoisePolicy:
    """Thresholds of the noise guard, and how many times a noisy cell is measured again."""

    max_cv: float = 0.15  # per side: sample standard deviation / mean
    max_drift: float = 0.10  # per side: |median of the last third / median of the first third - 1|
    max_round_ratio_cv: float = 0.10  # paired: CV of the per-round speedups
    max_clock_spread: float = 0.05  # GPU: (max - min) / max of the SM clock over the blocks
    max_temperature_c: float = 85.0  # GPU
    remeasure: int = 1

    def __post_init__(self) -> None:
        for name in ("max_cv", "max_drift", "max_round_ratio_cv", "max_clock_spread", "max_temperature_c"):
            if not getattr(self, name) > 0:
                raise BenchConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.remeasure < 0:
            raise BenchConfigError(f"remeasure must be >= 0, got {self.remeasure}")


@dataclass(frozen=True, kw_only=True)
class NoiseVerdict:
    """The checks' figures and the reasons a cell is noisy (none: it is not)."""

    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def noisy(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {"noisy": self.noisy, **asdict(self)}


def _side_checks(role: str, name: str, samples: list[float], policy: NoisePolicy) -> tuple[dict[str, Any], list[str]]:
    cv, moved = coefficient_of_variation(samples), drift(samples)
    reasons = []
    if cv is not None and cv > policy.max_cv:
        reasons.append(f"{name} CV {cv:.0%} > {policy.max_cv:.0%}")
    if moved is not None and abs(moved) > policy.max_drift:
        reasons.append(f"{name} drift {moved:+.0%} (limit ±{policy.max_drift:.0%})")
    return {f"{role}_cv": cv, f"{role}_drift": moved}, reasons


def _clock_checks(clocks: ClockLog, policy: NoisePolicy) -> list[str]:
    reasons = []
    slowdowns = clocks.slowdowns_seen()
    if slowdowns:
        reasons.append(f"GPU clocks held down: {', '.join(slowdowns)}")
    spread = clocks.sm_clock_spread()
    if spread is not None and spread > policy.max_clock_spread:
        sm = clocks.values("sm_clock_mhz")
        reasons.append(f"SM clock {min(sm):.0f}-{max(sm):.0f} MHz, spread {spread:.0%} > {policy.max_clock_spread:.0%}")
    temperatures = clocks.values("temperature_c")
    if temperatures and max(temperatures) > policy.max_temperature_c:
        reasons.append(f"GPU {max(temperatures):.0f} °C > {policy.max_temperature_c:.0f} °C")
    return reasons


def assess(sides: Sequence[tuple[str, str, Sequence[float]]], round_speedups: Sequence[float] | None,
           clocks: ClockLog, policy: NoisePolicy) -> NoiseVerdict:
    """The noise verdict on a measurement: `sides` as (role, name, samples in time order) with role
    "baseline" or "measured" (the figures' prefix; the name is what the reasons say), the paired
    rounds' speedups (None when unpaired), and the clock readings."""
    figures: dict[str, Any] = {}
    reasons: list[str] = []
    for role, name, samples in sides:
        side_figures, side_reasons = _side_checks(role, name, list(samples), policy)
        figures.update(side_figures)
        reasons += side_reasons
    if round_speedups is not None and len(round_speedups) >= 2:
        ratio_cv = coefficient_of_variation(round_speedups)
        figures["round_speedup_cv"] = ratio_cv
        if ratio_cv is not None and ratio_cv > policy.max_round_ratio_cv:
            reasons.append(f"round speedups CV {ratio_cv:.0%} > {policy.max_round_ratio_cv:.0%}")
    reasons += _clock_checks(clocks, policy)
    return NoiseVerdict(reasons=reasons, figures=figures)

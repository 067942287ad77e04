"""Timed rounds: one side alone, or a baseline and a measured side interleaved so drift hits both.

A round is a few blocks; a block is `block_steps` timed steps of one side. With one side a round is
one block (with `block_steps=1`, one sample at a time, as a plain sampling loop). With two, a round is
ABBA (the next BAAB, so neither side always goes first), or with `order="random"` a seeded shuffle of
AABB: each side gets two blocks per round, and whatever slows the machine during a round lands on
both. A side's `enter`/`leave` run around each of its blocks: no-ops while both models stay on the
device, moves on and off it when they take turns. The clocks are read after every block.

A step's timings come from its workload (`PreparedStep.timed`, `DecodeStep.timed`): the step time,
plus any phases the workload times inside a step (a decode workload's time to first token and time
per output token), plus per-token series (its inter-token latencies). Every phase is kept per side and
round, so it is paired exactly like the step time, and `paired_fields` turns the rounds into the
record's "paired" field, a ratio and CI per phase included; series are kept per step, not paired.

Across ranks (a torchrun launch, `sync` active): every block starts after a barrier, and each timed
step counts at its slowest rank (the block's times are all-gathered and the largest kept), so every
rank holds the same samples and makes the same stopping decision (the elapsed time is the ranks'
largest); each rank's own times are kept beside them (`Rounds.own`).

Sampling stops at the first of: every side has `min_samples` (and, paired, `min_rounds` rounds) and
the 95% CI of the step time is tight (the paired speedup's, or a lone side's median), the budget is
spent after those minimums, or a side reaches `max_samples`.
"""

from __future__ import annotations

import bisect
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from teswap.benchmark.clocks import ClockLog
from teswap.benchmark.plan import Cell
from teswap.benchmark.timing import (
    STEP_TIME,
    Clock,
    StepTimings,
    Timer,
    TimingPolicy,
    TimingStats,
    ci_is_tight,
    summarize,
)
from teswap.benchmark.workloads import WorkloadStep
from teswap.distributed.sync import RankSync
from teswap.statistics import RESAMPLES, RatioEstimate, paired_ratio, round_ratios

STOP_CHECK_RESAMPLES = 500  # enough to judge "tight yet?"; the recorded interval uses RESAMPLES


def _nothing() -> None:
    pass


@dataclass(kw_only=True)
class Side:
    """One model's part in a measurement: its cell, its prepared step, and how it is placed.

    `enter`/`leave` run around each of its blocks, `dismiss` once after the rounds for a baseline (so
    the measured model's memory is taken alone). All are no-ops where nothing has to move.
    """

    cell: Cell
    step: WorkloadStep
    enter: Callable[[], None] = _nothing
    leave: Callable[[], None] = _nothing
    dismiss: Callable[[], None] = _nothing

    @property
    def name(self) -> str:
        return self.cell.backend


@dataclass(kw_only=True)
class Rounds:
    """Every timed sample of a measurement, per side and round, in time order; the clock readings."""

    sides: int
    order: str
    block_steps: int
    samples: list[list[list[float]]] = field(default_factory=list)  # [side][round] -> step times
    phases: dict[str, list[list[list[float]]]] = field(default_factory=dict)  # name -> [side][round] -> times
    series: dict[str, list[list[list[list[float]]]]] = field(default_factory=dict)  # name -> [side][round] -> per step
    clocks: ClockLog = field(default_factory=lambda: ClockLog(meter=None))
    stop_reason: str = ""
    timer: str = ""
    own: list[list[float]] = field(default_factory=list)  # [side] -> this rank's own step times (multi-rank runs)
    rank_times: list[list[list[float]]] = field(default_factory=list)  # [side][rank] -> that rank's step times

    def __post_init__(self) -> None:
        if not self.samples:
            self.samples = [[] for _ in range(self.sides)]

    @property
    def paired(self) -> bool:
        return self.sides == 2

    @property
    def count(self) -> int:
        """Completed rounds."""
        return min(len(rounds) for rounds in self.samples)

    def add(self, side: int, round_index: int, block: list[StepTimings]) -> None:
        """A block's timings (one dict per step): the step time, any phases and series the workload timed."""
        _append(self.samples, side, round_index, [float(timings[STEP_TIME]) for timings in block])  # type: ignore[arg-type]
        for name in dict.fromkeys(name for timings in block for name in timings if name != STEP_TIME):
            values = [timings[name] for timings in block if name in timings]
            kept = self.series if isinstance(values[0], list) else self.phases
            per_side = kept.setdefault(name, [[] for _ in range(self.sides)])  # type: ignore[attr-defined]
            _append(per_side, side, round_index, values)

    def timings_of(self, side: int) -> dict[str, list]:
        """One side's timings over its complete rounds, one entry per step in time order: the step time,
        each phase (floats) and each series (a list per step)."""
        rounds = self.count
        out: dict[str, list] = {STEP_TIME: [s for block in self.samples[side][:rounds] for s in block]}
        for kept in (self.phases, self.series):
            for name, per_side in kept.items():
                out[name] = [value for block in per_side[side][:rounds] for value in block]
        return out

    def phase_ratio(self, name: str, *, seed: int = 0) -> RatioEstimate | None:
        """A timed phase's paired ratio (baseline / measured) over the complete rounds; None with one side."""
        if not self.paired or self.count == 0 or name not in self.phases:
            return None
        rounds = self.count
        return paired_ratio(self.phases[name][0][:rounds], self.phases[name][1][:rounds], seed=seed)

    def of(self, side: int) -> list[float]:
        """One side's samples in time order."""
        return [s for block in self.samples[side] for s in block]

    def ratio(self, *, resamples: int = RESAMPLES, seed: int = 0) -> RatioEstimate | None:
        """The paired speedup (baseline time / measured time) over complete rounds; None with one side."""
        if not self.paired or self.count == 0:
            return None
        rounds = self.count
        return paired_ratio(self.samples[0][:rounds], self.samples[1][:rounds], resamples=resamples, seed=seed)

    def speedups(self) -> list[float] | None:
        """Each complete round's speedup (baseline median / measured median); None with one side."""
        if not self.paired:
            return None
        rounds = self.count
        return [float(r) for r in round_ratios(self.samples[0][:rounds], self.samples[1][:rounds])]

    def stats(self, side: int, warmup: int) -> TimingStats:
        """The statistics of one side's samples."""
        return summarize(self.of(side), warmup=warmup, stop_reason=self.stop_reason, timer=self.timer)


def _append(samples: list[list[list]], side: int, round_index: int, values: list) -> None:
    rounds = samples[side]
    while len(rounds) <= round_index:
        rounds.append([])
    rounds[round_index].extend(values)


def block_order(sides: int, round_index: int, order: str, rng: random.Random) -> list[int]:
    """Which side runs each block of round `round_index` (0 = baseline, 1 = measured)."""
    if sides == 1:
        return [0]
    if order == "random":
        blocks = [0, 0, 1, 1]
        rng.shuffle(blocks)
        return blocks
    return [0, 1, 1, 0] if round_index % 2 == 0 else [1, 0, 0, 1]


def timed_step(step: Callable[[], object], timer: Timer) -> StepTimings:
    """One step's timings: the workload's own (`PreparedStep.timed`), or the step time of a plain callable."""
    timed = getattr(step, "timed", None)
    return timed(timer) if callable(timed) else {STEP_TIME: timer.time(step)}


def _run_block(side: Side, policy: TimingPolicy, timer: Timer, sync: RankSync) -> list[StepTimings]:
    side.enter()
    try:
        for _ in range(policy.block_warmup):
            side.step()
        sync.barrier()  # every rank starts the timed steps together
        return [timed_step(side.step, timer) for _ in range(policy.block_steps)]
    finally:
        side.leave()


def _stop_reason(rounds: Rounds, policy: TimingPolicy, ordered: list[list[float]], elapsed_s: float) -> str | None:
    counts = [len(o) for o in ordered]
    if max(counts) >= policy.max_samples:
        return "max_samples"
    if min(counts) < policy.min_samples or (rounds.paired and rounds.count < policy.min_rounds):
        return None
    if rounds.paired:
        extra = rounds.count - policy.min_rounds
        if extra % max(1, rounds.count // 8):  # past a few dozen rounds, judge every few rounds only
            return "budget" if elapsed_s >= policy.budget_s else None
        half_width = rounds.ratio(resamples=STOP_CHECK_RESAMPLES).relative_half_width()  # type: ignore[union-attr]
        tight = half_width is not None and half_width <= policy.target_rel_ci
    else:
        tight = ci_is_tight(ordered[0], policy.target_rel_ci)
    if tight:
        return "ci"
    return "budget" if elapsed_s >= policy.budget_s else None


def _slowest(block: list[StepTimings], sync: RankSync, rounds: Rounds, side: int) -> list[StepTimings]:
    """The block with each step time replaced by its slowest rank's; this rank's and every rank's times kept."""
    own = [float(timings[STEP_TIME]) for timings in block]  # type: ignore[arg-type]
    slowest, every = sync.slowest(own)
    while len(rounds.own) < rounds.sides:
        rounds.own.append([])
        rounds.rank_times.append([[] for _ in every])
    rounds.own[side].extend(own)
    for rank, times in enumerate(every):
        rounds.rank_times[side][rank].extend(times)
    return [{**timings, STEP_TIME: value} for timings, value in zip(block, slowest, strict=True)]


def run_rounds(sides: Sequence[Side], policy: TimingPolicy, timer: Timer, *, clocks: ClockLog,
               clock: Clock = time.perf_counter, seed: int = 0, sync: RankSync | None = None) -> Rounds:
    """Time rounds of blocks until the stopping rule says enough (see the module docstring)."""
    if len(sides) not in (1, 2):
        raise ValueError(f"a measurement has one side or a baseline and a measured side, got {len(sides)}")
    rounds = Rounds(sides=len(sides), order=policy.order if len(sides) == 2 else "single",
                    block_steps=policy.block_steps, clocks=clocks, timer=timer.name)
    ordered: list[list[float]] = [[] for _ in sides]  # kept sorted for the cheap median-CI check
    rng = random.Random(seed)
    sync = sync or RankSync(None)
    started = clock()
    round_index = 0
    while True:
        for index in block_order(len(sides), round_index, policy.order, rng):
            block = _run_block(sides[index], policy, timer, sync)
            if sync.active:
                block = _slowest(block, sync, rounds, index)
            clocks.read()
            rounds.add(index, round_index, block)
            for timings in block:
                bisect.insort(ordered[index], float(timings[STEP_TIME]))  # type: ignore[arg-type]
        round_index += 1
        reason = _stop_reason(rounds, policy, ordered, sync.max(clock() - started))
        if reason:
            rounds.stop_reason = reason
            return rounds


def paired_fields(rounds: Rounds, baseline: Side, placement: str, warmup: int) -> dict[str, Any]:
    """A paired cell's "paired" record field: both sides' samples per round and the speedup with its CI."""
    ratio = rounds.ratio()
    assert ratio is not None
    complete = rounds.count
    base = summarize(rounds.of(0), warmup=warmup, stop_reason=rounds.stop_reason, timer=rounds.timer)
    return {"baseline": baseline.cell.to_dict(), "order": rounds.order, "placement": placement, "rounds": complete,
            "block_steps": rounds.block_steps, "samples_s": rounds.samples[1][:complete],
            "baseline_samples_s": rounds.samples[0][:complete], "speedup": ratio.estimate,
            "speedup_ci_low": ratio.ci_low, "speedup_ci_high": ratio.ci_high, "confidence": ratio.confidence,
            "method": ratio.method, "baseline_median_s": base.median_s,
            "baseline_tokens_per_s": baseline.step.tokens_per_step / base.median_s, "phases": _phases(rounds)}


def _phases(rounds: Rounds) -> dict[str, Any]:
    """Per phase the workload timed inside its steps: both sides' samples per round, the ratio and its CI."""
    out = {}
    for name, per_side in rounds.phases.items():
        ratio = rounds.phase_ratio(name)
        if ratio is not None:
            out[name] = {"samples": per_side[1][:rounds.count], "baseline_samples": per_side[0][:rounds.count],
                         "ratio": ratio.estimate, "ci_low": ratio.ci_low, "ci_high": ratio.ci_high}
    return out

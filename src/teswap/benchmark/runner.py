"""Measure one cell: alone, or paired with its stock baseline in interleaved rounds.

Order inside a cell: prepare each side (optimizer, FP8 calibration) -> warm-up of each side (not
timed) -> timed rounds (rounds.py: ABBA blocks when paired) with the clocks read after every block ->
the noise guard (noise.py): a noisy cell is timed again, up to `remeasure` times -> the baseline
leaves the device -> memory peaks reset -> the energy window: one step, extended to its minimum
duration -> one untimed memory step on CPU -> metrics. Memory and energy are the measured model's
alone. An out-of-memory error makes the cell "oom" (what was freed is released before the next
cell); any other exception makes it "error"; KeyboardInterrupt is not caught.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from teswap.benchmark.clocks import ClockLog
from teswap.benchmark.energy import EnergyMetrics, EnergyWindow
from teswap.benchmark.memory import MemoryResult, MemoryTracker
from teswap.benchmark.metrics import cell_metrics, decode_fields
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.noise import NoisePolicy, NoiseVerdict, assess
from teswap.benchmark.plan import Cell
from teswap.benchmark.residency import Placement, hooks_for
from teswap.benchmark.rounds import Rounds, Side, paired_fields, run_rounds
from teswap.benchmark.timing import Clock, Timer, TimingPolicy, TimingStats, timer_for, warm_up
from teswap.benchmark.workloads import WorkloadStep, make_input_ids, prepare_step, release
from teswap.distributed.sync import PeerLost, RankSync
from teswap.hardware.nvml import PowerMeter

OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True, kw_only=True)
class CellContext:
    """What every cell of a sweep shares: timing and noise policies, power meter, energy settings, idle baseline."""

    policy: TimingPolicy
    noise: NoisePolicy = field(default_factory=NoisePolicy)
    seed: int = 0
    meter: PowerMeter | None = None
    energy_null_reason: str | None = "no power meter"
    min_energy_window_s: float = 0.0
    sample_interval_s: float = 0.05
    idle_power_w: float | None = None
    idle_power_null_reason: str | None = None
    clock: Clock = time.perf_counter
    timer: Timer | None = None  # None: CUDA events on GPU, perf_counter on CPU
    ranks: RankSync = field(default_factory=lambda: RankSync(None))  # the launch's ranks (inert for one process)


@dataclass(frozen=True, kw_only=True)
class CellOutcome:
    """A cell's result: status, statistics and metrics, and (when timed) the pairing, noise and clocks."""

    status: str
    reason: str | None
    stats: TimingStats | None
    metrics: dict[str, Any]
    paired: dict[str, Any] | None = None
    noise: dict[str, Any] | None = None
    clocks: dict[str, Any] | None = None
    decode: dict[str, Any] | None = None  # a decode cell's per-generation phases and per-token latencies
    ranks: dict[str, Any] | None = None  # multi-rank runs: every rank's own step times and medians (rank_fields)


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """The stock cell a swapped cell is paired with, and the model that runs it."""

    cell: Cell
    model: torch.nn.Module


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


# Times the rounds of a measurement (its sides, in order: baseline first), reading clocks into the log.
TimeRounds = Callable[[Sequence[Side], ClockLog], Rounds]


def interleaved(ctx: CellContext, device: torch.device) -> TimeRounds:
    """The sweep's timing: device-synchronised blocks in rounds until the stopping rule (ctx.policy)."""
    def time_rounds(sides: Sequence[Side], clocks: ClockLog) -> Rounds:
        return run_rounds(sides, ctx.policy, ctx.timer or timer_for(device), clocks=clocks, clock=ctx.clock,
                          seed=ctx.seed, sync=ctx.ranks)

    return time_rounds


def _verdict(rounds: Rounds, sides: Sequence[Side], policy: NoisePolicy) -> NoiseVerdict:
    roles = ["baseline", "measured"][-len(sides):]
    checked = [(role, side.name, rounds.of(index)) for index, (role, side) in enumerate(zip(roles, sides, strict=True))]
    return assess(checked, rounds.speedups(), rounds.clocks, policy)


def _timed(sides: Sequence[Side], ctx: CellContext, time_rounds: TimeRounds) -> tuple[Rounds, NoiseVerdict, int,
                                                                                     list[list[str]]]:
    """Rounds that pass the noise guard, or the last of 1 + remeasure tries; the tries and earlier reasons."""
    earlier: list[list[str]] = []
    for attempt in range(1, ctx.noise.remeasure + 2):
        rounds = time_rounds(sides, ClockLog(meter=ctx.meter, null_reason=ctx.energy_null_reason))
        verdict = _verdict(rounds, sides, ctx.noise)
        noisy = ctx.ranks.any(verdict.noisy)  # one rank's unsteady clocks time the cell again on every rank
        if not noisy or attempt == ctx.noise.remeasure + 1:
            return rounds, verdict, attempt, earlier
        earlier.append(verdict.reasons)
    raise AssertionError("unreachable")


def _energy_and_memory(step: WorkloadStep, device: torch.device, ctx: CellContext,
                       tracker: MemoryTracker) -> EnergyMetrics:
    """The measured model alone: memory peaks from here, energy over >= 1 step extended to the minimum window."""
    tracker.start()
    window = EnergyWindow(ctx.meter, device, null_reason=ctx.energy_null_reason,
                          min_window_s=ctx.min_energy_window_s, sample_interval_s=ctx.sample_interval_s,
                          clock=ctx.clock)
    with window:
        step()  # at least one step after the peak reset: the GPU's peak is this model's
        steps = 1 + window.extend_to(step, agree=ctx.ranks.any)
    tracker.after_timing(step, step.resident_tensors)
    return window.metrics(tokens=steps * step.tokens_per_step, steps=steps)


def measure(sides: Sequence[Side], shape: ModelShape, ctx: CellContext, tracker: MemoryTracker,
            time_rounds: TimeRounds, *, placement: str = "resident") -> CellOutcome:
    """Warm up, time rounds (paired when there is a baseline side), guard against noise, then take the
    measured model's energy and memory and derive the metrics. The last side is the measured cell's.

    The one measurement every benchmark path uses (the sweep and the pytest-benchmark suites alike).
    """
    measured = sides[-1]
    device = torch.device(measured.cell.device)
    for side in sides:
        with _placed(side):
            warm_up(side.step, ctx.policy.warmup, device)
    rounds, verdict, attempts, earlier = _timed(sides, ctx, time_rounds)
    for partner in sides[:-1]:
        partner.dismiss()
    with _placed(measured):
        energy = _energy_and_memory(measured.step, device, ctx, tracker)
    samples = rounds.of(len(sides) - 1)
    stats = rounds.stats(len(sides) - 1, ctx.policy.warmup) if samples else None  # none: pytest --benchmark-disable
    tokens_per_s = measured.step.tokens_per_step / stats.median_s if stats else None  # at the median step time
    decode_metrics, decode = decode_fields(measured.step, rounds.timings_of(len(sides) - 1)) if stats else ({}, None)
    metrics = cell_metrics(measured.cell, shape, device, tokens_per_s=tokens_per_s, memory=tracker.result(),
                           energy=energy, idle=_idle(ctx), decode=decode_metrics)
    paired = paired_fields(rounds, sides[0], placement, ctx.policy.warmup) if rounds.paired and stats else None
    noise = {**verdict.to_dict(), "attempts": attempts, "earlier_reasons": earlier} if stats else None
    ranks = rank_fields(rounds, measured.step.tokens_per_step) if ctx.ranks.active and stats else None
    return CellOutcome(status="ok", reason=None, stats=stats, metrics=metrics, paired=paired, noise=noise,
                       clocks=rounds.clocks.to_dict(), decode=decode, ranks=ranks)


def rank_fields(rounds: Rounds, tokens_per_step: int) -> dict[str, Any]:
    """Every rank's own step times and medians (the measured side, and the baseline when paired); the
    cell's samples are the slowest rank's per step, so these show which rank that was."""
    measured = len(rounds.rank_times) - 1
    medians = [statistics.median(times) for times in rounds.rank_times[measured]]
    fields: dict[str, Any] = {"tokens_per_step": tokens_per_step, "rank_samples_s": rounds.rank_times[measured],
                              "rank_median_s": medians, "slowest_rank": medians.index(max(medians))}
    if rounds.paired:
        fields["rank_baseline_samples_s"] = rounds.rank_times[0]
        fields["rank_baseline_median_s"] = [statistics.median(times) for times in rounds.rank_times[0]]
    return fields


@contextmanager
def _placed(side: Side) -> Iterator[None]:
    side.enter()
    try:
        yield
    finally:
        side.leave()


def _idle(ctx: CellContext) -> dict[str, Any]:
    return {"idle_power_w": ctx.idle_power_w, "idle_power_null_reason": ctx.idle_power_null_reason}


def unmeasured(status: str, reason: str, ctx: CellContext, memory: MemoryResult | None = None) -> CellOutcome:
    """The outcome of a cell that has no timing: its status and reason, and what memory it reached."""
    memory = memory or MemoryResult(peak_memory_null_reason=f"cell {status}")
    metrics = {**memory.to_dict(), **_idle(ctx), "energy_null_reason": f"cell {status}",
               "mfu_null_reason": f"cell {status}"}
    return CellOutcome(status=status, reason=reason, stats=None, metrics=metrics)


def _after_failure(device: torch.device, tracker: MemoryTracker) -> MemoryResult:
    """Free what the failed step left, then read how high memory got (GPU) before it failed."""
    gc.collect()
    if device.type == "cuda":
        peak = tracker.result()
        torch.cuda.empty_cache()
        return peak
    return MemoryResult(peak_memory_null_reason="the cell failed before its memory step")


def _prepared_side(cell: Cell, model: torch.nn.Module, ids: torch.Tensor, placement: Placement) -> Side:
    """`cell`'s step on `model`, prepared while the model is on the device (FP8 calibration runs a forward)."""
    hooks = placement.hooks(model)
    hooks.enter()
    try:
        step = prepare_step(cell.workload, model, ids, backend=cell.backend, precision=cell.precision,
                            new_tokens=cell.new_tokens, options=cell.options)
    finally:
        hooks.leave()
    return Side(cell=cell, step=step, **hooks_for(placement, step.model, step))  # the model the step runs


def measure_cell(cell: Cell, model: torch.nn.Module, shape: ModelShape, ctx: CellContext, *,
                 baseline: Baseline | None = None, placement: Placement | None = None) -> CellOutcome:
    """Run one cell on `model`, paired with `baseline` when given; never raises except KeyboardInterrupt.

    `placement` says where the models are (default: already on cell.device, and they stay there).
    """
    device = torch.device(cell.device)
    placement = placement or Placement.resident(device)
    tracker = MemoryTracker(device)
    sides: list[Side] = []
    status, reason = "error", ""
    try:
        ids = make_input_ids(shape.vocab_size, cell.batch, cell.seq_len, seed=ctx.seed, device=device)
        if baseline is not None:
            sides.append(_prepared_side(baseline.cell, baseline.model, ids, placement.as_baseline()))
        sides.append(_prepared_side(cell, model, ids, placement))
        return measure(sides, shape, ctx, tracker, interleaved(ctx, device), placement=placement.name)
    except PeerLost:
        raise  # another rank stopped: this cell has no result here, and the launch ends
    except OutOfMemoryError as err:
        status, reason = "oom", first_line(err)
    except Exception as err:  # noqa: BLE001 - any failure is this cell's result; the sweep goes on
        status, reason = "error", first_line(err)
    finally:
        for side in sides:
            release(side.step)
        sides = []
    # Outside the except block, so the traceback (and the tensors its frames hold) is gone.
    return unmeasured(status, reason, ctx, _after_failure(device, tracker))

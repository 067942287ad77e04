"""Measure one cell: warm up, time until stable, extend the energy window, take peak memory, derive MFU.

Order inside a cell: prepare (optimizer, FP8 calibration) -> reset memory peaks -> warm-up (not timed)
-> energy window opens -> timed samples -> window extended to its minimum -> window closes -> one
untimed memory step on CPU. An out-of-memory error makes the cell "oom" (what was freed is released
before the next cell); any other exception makes it "error"; KeyboardInterrupt is not caught.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from teswap.benchmark.energy import EnergyMetrics, EnergyWindow
from teswap.benchmark.memory import MemoryResult, MemoryTracker
from teswap.benchmark.mfu import ModelShape, model_flops_utilization
from teswap.benchmark.plan import Cell
from teswap.benchmark.timing import Clock, Timer, TimingPolicy, TimingStats, sample, timer_for, warm_up
from teswap.benchmark.workloads import PreparedStep, make_input_ids, prepare_step, release
from teswap.hardware.nvml import PowerMeter

OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True, kw_only=True)
class CellContext:
    """What every cell of a sweep shares: timing policy, power meter, energy settings, idle baseline."""

    policy: TimingPolicy
    seed: int = 0
    meter: PowerMeter | None = None
    energy_null_reason: str | None = "no power meter"
    min_energy_window_s: float = 0.0
    sample_interval_s: float = 0.05
    idle_power_w: float | None = None
    idle_power_null_reason: str | None = None
    clock: Clock = time.perf_counter
    timer: Timer | None = None  # None: CUDA events on GPU, perf_counter on CPU


@dataclass(frozen=True, kw_only=True)
class CellOutcome:
    status: str
    reason: str | None
    stats: TimingStats | None
    metrics: dict[str, Any]


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


# Runs the timed steps of a cell: returns their statistics (None when nothing was timed) and how many
# steps ran, so the energy window knows what it covered.
TimeSteps = Callable[[PreparedStep], tuple[TimingStats | None, int]]


def sampled(ctx: CellContext, device: torch.device) -> TimeSteps:
    """The sweep's timing: device-synchronised samples until the median is tight (ctx.policy)."""
    def time_steps(step: PreparedStep) -> tuple[TimingStats | None, int]:
        stats = sample(step, ctx.policy, ctx.timer or timer_for(device), clock=ctx.clock)
        return stats, stats.count

    return time_steps


def measure(step: PreparedStep, cell: Cell, shape: ModelShape, ctx: CellContext, tracker: MemoryTracker,
            time_steps: TimeSteps) -> CellOutcome:
    """Warm up, time the steps inside the energy window, extend the window, take peak memory, derive the metrics.

    The one measurement every benchmark path uses (the sweep and the pytest-benchmark suites alike).
    """
    device = torch.device(cell.device)
    tracker.start()
    warm_up(step, ctx.policy.warmup, device)
    window = EnergyWindow(ctx.meter, device, null_reason=ctx.energy_null_reason,
                          min_window_s=ctx.min_energy_window_s, sample_interval_s=ctx.sample_interval_s,
                          clock=ctx.clock)
    with window:
        stats, steps = time_steps(step)
        extra_steps = window.extend_to(step)
    tracker.after_timing(step, step.resident_tensors)
    tokens_per_s = step.tokens_per_step / stats.median_s if stats else None  # throughput at the median step time
    window_steps = steps + extra_steps
    energy = window.metrics(tokens=window_steps * step.tokens_per_step, steps=window_steps)
    metrics = cell_metrics(cell, shape, device, tokens_per_s=tokens_per_s, memory=tracker.result(), energy=energy,
                           idle=_idle(ctx))
    return CellOutcome(status="ok", reason=None, stats=stats, metrics=metrics)


def cell_metrics(cell: Cell, shape: ModelShape, device: torch.device, *, tokens_per_s: float | None,
                 memory: MemoryResult, energy: EnergyMetrics, idle: dict[str, Any]) -> dict[str, Any]:
    """A finished cell's "metrics": throughput, memory, energy and MFU, each with its method or null reason."""
    mfu = model_flops_utilization(shape=shape, seq_len=cell.seq_len, workload=cell.workload, precision=cell.precision,
                                  tokens_per_s=tokens_per_s, device_type=device.type, device_name=_device_name(device))
    return {"tokens_per_s": tokens_per_s, **memory.to_dict(), **energy.to_dict(),
            "flops_per_token": mfu.flops_per_token, "mfu_vs_bf16_peak": mfu.mfu_vs_bf16_peak,
            "mfu_vs_precision_peak": mfu.mfu_vs_precision_peak, "mfu_null_reason": mfu.mfu_null_reason,
            "mfu_peak_gpu": mfu.peak_gpu, **idle}


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


def measure_cell(cell: Cell, model: torch.nn.Module, shape: ModelShape, ctx: CellContext) -> CellOutcome:
    """Run one cell on `model` (already on cell.device); never raises except KeyboardInterrupt."""
    device = torch.device(cell.device)
    tracker = MemoryTracker(device)
    step: PreparedStep | None = None
    status, reason = "error", ""
    try:
        ids = make_input_ids(shape.vocab_size, cell.batch, cell.seq_len, seed=ctx.seed, device=device)
        step = prepare_step(cell.workload, model, ids, backend=cell.backend, precision=cell.precision)
        return measure(step, cell, shape, ctx, tracker, sampled(ctx, device))
    except OutOfMemoryError as err:
        status, reason = "oom", first_line(err)
    except Exception as err:  # noqa: BLE001 - any failure is this cell's result; the sweep goes on
        status, reason = "error", first_line(err)
    finally:
        if step is not None:
            release(step)
        step = None
    # Outside the except block, so the traceback (and the tensors its frames hold) is gone.
    return unmeasured(status, reason, ctx, _after_failure(device, tracker))

"""Benchmarks of the stock and the swapped model: tokens/s, peak memory, energy, MFU, per cell.

One concern per module:

    plan.py       SweepSpec, Cell, the cells of a sweep, the default sweep for this hardware
    workloads.py  prefill, training-step and decode callables
    decode/       decode cells: the step, its token clock, TTFT/TPOT metrics, options, setup (decode/__init__.py)
    te_speed.py   TE's calls for the speed options: make_graphed_callables, quantized_model_init
    metrics.py    a finished cell's "metrics" field (throughput, memory, energy, MFU, decode's)
    timing.py     device-synchronised timers, warm-up, the timing policy, a side's statistics
    rounds.py     timed rounds: one side alone, or baseline and measured interleaved (ABBA), when to stop,
                  and the record's "paired" field
    noise.py      the noise guard: spread, drift, per-round speedup spread, GPU clocks -> noisy with reasons
    clocks.py     SM/memory clocks, temperature and NVML clock event reasons read after every block
    memory.py     peak memory per cell (CUDA allocator peaks; live tensor bytes on CPU)
    memory_estimate.py  a cell's (a pair build's, a parity case's) peak estimated from the shape; does it fit
    energy.py     energy windows (NVML counter), background power sampler, idle baseline
    mfu.py        FLOPs per token and MFU against a table of dense GPU peaks
    runner.py     one cell: measure() (warm-up, rounds, noise guard, energy, memory, MFU), alone or paired
                  with its stock baseline; oom/error as results
    sweep.py      a whole sweep: pairs built once, stock cells alone, swapped cells paired, records as cells
                  finish, resume
    residency.py  where models are: resident, or taking turns when two do not fit; the fit rule
    records.py    a cell's record, resume keys, finding finished cells in the store
    signals.py    SIGTERM/SIGINT as a clean stop that never tears a record
    progress.py   progress reporting (silent, or a bar on stderr)
    summary.py    the closing table, each speedup with its CI, and how it was measured
    pytest_bench.py  pytest-benchmark glue: pedantic cells through measure(), machine info, JSON -> records

NVML and GPU identity live in teswap.hardware. Importing this package imports torch but touches no
GPU and patches nothing. The ratio statistics (paired bootstrap, unpaired fallback) live in
teswap.statistics, so the reports use the same ones.
"""

from teswap.benchmark.noise import NoisePolicy
from teswap.benchmark.plan import Cell, SweepSpec, default_spec, describe, plan_cells
from teswap.benchmark.runner import Baseline, CellContext, CellOutcome, measure, measure_cell
from teswap.benchmark.sweep import SweepResult, run_sweep
from teswap.benchmark.timing import TimingPolicy, TimingStats

__all__ = [
    "Baseline",
    "Cell",
    "CellContext",
    "CellOutcome",
    "NoisePolicy",
    "SweepResult",
    "SweepSpec",
    "TimingPolicy",
    "TimingStats",
    "default_spec",
    "describe",
    "measure",
    "measure_cell",
    "plan_cells",
    "run_sweep",
]

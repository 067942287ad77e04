"""Benchmarks of the stock and the swapped model: tokens/s, peak memory, energy, MFU, per cell.

One concern per module:

    plan.py       SweepSpec, Cell, the cells of a sweep, the default sweep for this hardware
    workloads.py  prefill and training-step callables
    timing.py     device-synchronised timers, warm-up, stop-when-stable sampling, statistics
    memory.py     peak memory per cell (CUDA allocator peaks; live tensor bytes on CPU)
    energy.py     energy windows (NVML counter), background power sampler, idle baseline
    mfu.py        FLOPs per token and MFU against a table of dense GPU peaks
    runner.py     one cell: measure() (warm-up, timing, energy, memory, MFU), with oom/error as results
    sweep.py      a whole sweep: pairs built once, one model resident, records as cells finish, resume
    residency.py  one model on the device at a time
    records.py    a cell's record, resume keys, finding finished cells in the store
    signals.py    SIGTERM/SIGINT as a clean stop that never tears a record
    progress.py   progress reporting (silent, or a bar on stderr)
    summary.py    the closing table
    pytest_bench.py  pytest-benchmark glue: pedantic cells through measure(), machine info, JSON -> records

NVML and GPU identity live in teswap.hardware. Importing this package imports torch but touches no
GPU and patches nothing.

Importing this package imports torch but touches no GPU and patches nothing.
"""

from teswap.benchmark.plan import Cell, SweepSpec, default_spec, plan_cells
from teswap.benchmark.runner import CellContext, CellOutcome, measure, measure_cell
from teswap.benchmark.sweep import SweepResult, run_sweep
from teswap.benchmark.timing import TimingPolicy, TimingStats

__all__ = [
    "Cell",
    "CellContext",
    "CellOutcome",
    "SweepResult",
    "SweepSpec",
    "TimingPolicy",
    "TimingStats",
    "default_spec",
    "measure",
    "measure_cell",
    "plan_cells",
    "run_sweep",
]

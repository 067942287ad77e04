"""Benchmarks of the stock and the swapped model: tokens/s, peak memory, energy, MFU, per cell.

One concern per module:

    plan.py       SweepSpec, Cell, the cells of a sweep, defaults by hardware
    workloads.py  prefill and training-step callables
    timing.py     device-synchronised timers, warm-up, stop-when-stable sampling, statistics
    memory.py     peak memory per cell (CUDA allocator peaks; live tensor bytes on CPU)
    nvml.py       GPU power/energy access behind PowerMeter (pynvml imported lazily)
    energy.py     energy windows (NVML counter), background power sampler, idle baseline
    mfu.py        FLOPs per token and MFU against a table of dense GPU peaks
    gpu_info.py   GPU identity, limits and clocks for each record
    runner.py     one cell: all of the above, with oom/error as results
    sweep.py      a whole sweep: pairs built once, one model resident, records as cells finish, resume
    records.py    record fields, resume keys, finding finished cells in the store
    signals.py    SIGTERM/SIGINT as a clean stop that never tears a record
    summary.py    the closing table
    pytest_bench.py  pytest-benchmark glue: pedantic cells, machine info, --benchmark-json -> records

Importing this package imports torch but touches no GPU and patches nothing.
"""

from teswap.benchmark.plan import Cell, SweepSpec, default_spec, plan_cells
from teswap.benchmark.runner import CellContext, CellOutcome, measure_cell
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
    "measure_cell",
    "plan_cells",
    "run_sweep",
]

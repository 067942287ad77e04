"""Every cell of this hardware's sweep as a pytest-benchmark test (pedantic, device-synchronised); a
swapped cell is timed in rounds with its stock baseline (a stock step in each round's setup), so its
extra_info carries the paired speedup and its CI."""

from __future__ import annotations

import pytest
import torch

from teswap.benchmark.plan import Cell
from teswap.benchmark.pytest_bench import run_benchmark_cell
from teswap.benchmark.runner import OutOfMemoryError, first_line
from teswap.errors import TeswapError
from teswap.layers.backends import get_backend
from teswap.precision.runtime import require_precision


def _skip_reason(cell: Cell) -> str | None:
    if cell.backend == "stock":
        return None
    availability = get_backend(cell.backend).probe()
    if not availability:
        return f"backend {cell.backend!r} unavailable: {availability.reason}"
    try:
        require_precision(cell.precision, cell.backend, cell.device)
    except TeswapError as err:
        return str(err)
    return None


def test_cell(benchmark, bench_cell: Cell, resident_models, pytestconfig) -> None:
    reason = _skip_reason(bench_cell)
    if reason:
        pytest.skip(reason)
    on_gpu = bench_cell.device.startswith("cuda")
    rounds = pytestconfig.getoption("teswap_rounds") or 20
    warmup = pytestconfig.getoption("teswap_warmup")
    window = pytestconfig.getoption("teswap_min_energy_window_s")
    benchmark.group = f"{bench_cell.model} {bench_cell.workload} s={bench_cell.seq_len} b={bench_cell.batch}"
    model, baseline = resident_models.models_for(bench_cell)  # swapped cells: timed in rounds with stock
    try:
        info = run_benchmark_cell(benchmark, bench_cell, model, rounds=rounds, baseline=baseline,
                                  warmup=(5 if on_gpu else 3) if warmup is None else warmup,
                                  min_energy_window_s=(5.0 if on_gpu else 0.0) if window is None else window)
    except OutOfMemoryError as err:
        message = first_line(err)
        if on_gpu:
            torch.cuda.empty_cache()
        pytest.skip(f"out of memory: {message}")
    if benchmark.enabled:
        assert info["tokens_per_s"] > 0

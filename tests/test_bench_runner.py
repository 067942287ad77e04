"""One cell: an ok cell's figures, OOM and errors as results, interrupts passing through, energy wiring."""

from __future__ import annotations

import time

import pytest
import torch

from support import MeterOnClock
from teswap import build_pair
from teswap.benchmark import runner
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell
from teswap.benchmark.records import METRIC_FIELDS
from teswap.benchmark.runner import CellContext, measure_cell
from teswap.benchmark.timing import TimingPolicy

FAST = TimingPolicy(warmup=1, min_samples=3, max_samples=5, budget_s=0.05)


@pytest.fixture(scope="module")
def pair():
    return build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")


def cell(workload: str = "prefill", backend: str = "torch", precision: str = "fp32", seq_len: int = 32) -> Cell:
    return Cell(model="tiny", workload=workload, backend=backend, precision=precision, seq_len=seq_len, batch=2,
                device="cpu")


def model_of(pair, backend: str) -> torch.nn.Module:
    return pair.stock if backend == "stock" else pair.swapped


@pytest.mark.parametrize("workload", ["prefill", "train"])
@pytest.mark.parametrize("backend", ["stock", "torch"])
def test_ok_cell_has_stats_and_every_metric(pair, workload, backend):
    the_cell = cell(workload, backend)
    outcome = measure_cell(the_cell, model_of(pair, backend), ModelShape.from_config(pair.config),
                           CellContext(policy=FAST))
    assert outcome.status == "ok" and outcome.reason is None
    stats, metrics = outcome.stats, outcome.metrics
    assert 3 <= stats.count <= 5 and len(stats.samples_s) == stats.count and stats.warmup == 1
    assert metrics["tokens_per_s"] == the_cell.tokens_per_step / stats.median_s
    assert set(METRIC_FIELDS) <= set(metrics)
    assert metrics["peak_allocated_bytes"] > sum(p.numel() * 4 for p in pair.stock.parameters())
    assert metrics["energy_j"] is None and metrics["energy_null_reason"] == "no power meter"
    assert metrics["mfu_vs_bf16_peak"] is None and "cpu" in metrics["mfu_null_reason"]
    assert all(p.grad is None for p in pair.swapped.parameters())  # nothing carried into the next cell


def test_training_allocates_more_than_prefill(pair):
    shape, ctx = ModelShape.from_config(pair.config), CellContext(policy=FAST)
    prefill = measure_cell(cell("prefill"), pair.swapped, shape, ctx).metrics["peak_allocated_bytes"]
    train = measure_cell(cell("train"), pair.swapped, shape, ctx).metrics["peak_allocated_bytes"]
    assert train > prefill + 2 * sum(p.numel() * 4 for p in pair.swapped.parameters())  # grads + AdamW state


def _raise(error: BaseException):
    def sample(*args, **kwargs):
        raise error

    return sample


def test_out_of_memory_is_an_oom_result_and_frees_the_step(pair, monkeypatch):
    monkeypatch.setattr(runner, "run_rounds", _raise(torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")))
    outcome = measure_cell(cell("train"), pair.swapped, ModelShape.from_config(pair.config),
                           CellContext(policy=FAST))
    assert outcome.status == "oom" and outcome.stats is None
    assert outcome.reason == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert outcome.metrics["energy_null_reason"] == "cell oom"
    assert all(p.grad is None for p in pair.swapped.parameters())  # the warm-up's grads were released


def test_other_failures_are_error_results(pair, monkeypatch):
    monkeypatch.setattr(runner, "run_rounds", _raise(RuntimeError("shape mismatch")))
    outcome = measure_cell(cell(), pair.swapped, ModelShape.from_config(pair.config), CellContext(policy=FAST))
    assert (outcome.status, outcome.reason) == ("error", "RuntimeError: shape mismatch")


def test_keyboard_interrupt_is_not_swallowed(pair, monkeypatch):
    monkeypatch.setattr(runner, "run_rounds", _raise(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        measure_cell(cell(), pair.swapped, ModelShape.from_config(pair.config), CellContext(policy=FAST))


def test_energy_window_runs_the_measured_model_until_its_minimum_length(pair):
    ctx = CellContext(policy=FAST, meter=MeterOnClock(time.perf_counter, 400.0), energy_null_reason=None,
                      min_energy_window_s=0.3, idle_power_w=60.0)
    the_cell = cell()
    outcome = measure_cell(the_cell, pair.swapped, ModelShape.from_config(pair.config), ctx)
    metrics = outcome.metrics
    assert metrics["energy_window_s"] >= 0.3 and metrics["energy_window_steps"] >= 1
    assert metrics["power_avg_w"] == pytest.approx(400.0, rel=0.02)
    assert metrics["energy_per_token_j"] == pytest.approx(
        metrics["energy_j"] / (metrics["energy_window_steps"] * the_cell.tokens_per_step))
    assert metrics["power_peak_w"] == 400.0 and metrics["idle_power_w"] == 60.0

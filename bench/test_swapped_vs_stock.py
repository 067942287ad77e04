"""The torch backend against stock at fp32 on CPU: tokens/s ratio and peak-memory ratio per workload.

Stock and swapped cells are measured alternately (five rounds each, one thread) so load from other
processes hits both alike; reported is the median over rounds of swapped/stock tokens/s, and the
peak-memory ratio (deterministic: live tensor bytes). Not asserted: a timing, not a behaviour.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell
from teswap.benchmark.runner import CellContext, measure_cell
from teswap.benchmark.timing import TimingPolicy
from teswap.swap.pair import build_pair

ROUNDS = 5


@pytest.mark.parametrize("workload, seq_len", [("prefill", 128), ("prefill", 512), ("train", 128), ("train", 512)])
def test_swapped_vs_stock_fp32_cpu(benchmark, workload: str, seq_len: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")
        shape = ModelShape.from_config(pair.config)
        ctx = CellContext(policy=TimingPolicy(warmup=3, min_samples=15, target_rel_ci=0.01, budget_s=1.5))
        cells = {backend: Cell(model="tiny", workload=workload, backend=backend, precision="fp32", seq_len=seq_len,
                               batch=2, device="cpu") for backend in ("stock", "torch")}
        models = {"stock": pair.stock, "torch": pair.swapped}
        ratios, memory = [], {}
        for _ in range(ROUNDS):
            outcome = {b: measure_cell(cells[b], models[b], shape, ctx) for b in ("stock", "torch")}
            assert all(o.status == "ok" for o in outcome.values()), {b: o.reason for b, o in outcome.items()}
            ratios.append(outcome["torch"].metrics["tokens_per_s"] / outcome["stock"].metrics["tokens_per_s"])
            memory = {b: o.metrics["peak_allocated_bytes"] for b, o in outcome.items()}
        benchmark.pedantic(lambda: None, rounds=1)  # the figures travel in extra_info
    finally:
        torch.set_num_threads(previous)
    result = {"tokens_per_s_ratio": statistics.median(ratios), "per_round_ratio": ratios,
              "peak_memory_ratio": memory["torch"] / memory["stock"], "peak_allocated_bytes": memory}
    benchmark.extra_info.update(result)
    print(f"\n{workload} s={seq_len}: torch/stock tokens/s = {result['tokens_per_s_ratio']:.3f} "
          f"(rounds {', '.join(f'{r:.3f}' for r in ratios)}), peak memory = {result['peak_memory_ratio']:.3f}")

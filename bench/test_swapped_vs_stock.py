"""The torch backend against stock at fp32 on CPU: the paired speedup with its CI, and the peak-memory ratio.

Each cell is one paired measurement (runner.measure_cell with a Baseline): stock and swapped timed in
interleaved ABBA rounds, one thread, so load from other processes hits both alike. Reported: the
speedup (median of the per-round ratios) with its 95% bootstrap CI over rounds, the noise verdict, and
the peak-memory ratio (deterministic: live tensor bytes). Not asserted: a timing, not a behaviour.
"""

from __future__ import annotations

import pytest
import torch

from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell
from teswap.benchmark.runner import Baseline, CellContext, measure_cell
from teswap.benchmark.timing import TimingPolicy
from teswap.swap.pair import build_pair


@pytest.mark.parametrize("workload, seq_len", [("prefill", 128), ("prefill", 512), ("train", 128), ("train", 512)])
def test_swapped_vs_stock_fp32_cpu(benchmark, workload: str, seq_len: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")
        shape = ModelShape.from_config(pair.config)
        ctx = CellContext(policy=TimingPolicy(warmup=3, min_samples=15, target_rel_ci=0.01, budget_s=6.0,
                                              block_steps=3, min_rounds=10))
        cells = {backend: Cell(model="tiny", workload=workload, backend=backend, precision="fp32", seq_len=seq_len,
                               batch=2, device="cpu") for backend in ("stock", "torch")}
        stock = measure_cell(cells["stock"], pair.stock, shape, ctx)  # alone, for its peak memory
        paired = measure_cell(cells["torch"], pair.swapped, shape, ctx,
                              baseline=Baseline(cell=cells["stock"], model=pair.stock))
        assert stock.status == paired.status == "ok", (stock.reason, paired.reason)
        benchmark.pedantic(lambda: None, rounds=1)  # the figures travel in extra_info
    finally:
        torch.set_num_threads(previous)
    record = paired.paired
    memory = {"stock": stock.metrics["peak_allocated_bytes"], "torch": paired.metrics["peak_allocated_bytes"]}
    result = {"speedup": record["speedup"], "speedup_ci": [record["speedup_ci_low"], record["speedup_ci_high"]],
              "rounds": record["rounds"], "noise": paired.noise["reasons"],
              "peak_memory_ratio": memory["torch"] / memory["stock"], "peak_allocated_bytes": memory}
    benchmark.extra_info.update(result)
    print(f"\n{workload} s={seq_len}: torch/stock speedup = {record['speedup']:.3f} "
          f"[{record['speedup_ci_low']:.3f}, {record['speedup_ci_high']:.3f}] over {record['rounds']} paired rounds"
          f"{' (noisy: ' + '; '.join(paired.noise['reasons']) + ')' if paired.noise['noisy'] else ''}, "
          f"peak memory = {result['peak_memory_ratio']:.3f}")

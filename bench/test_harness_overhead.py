"""The harness adds nothing measurable: its tokens/s next to a bare perf_counter loop, side by side.

Tiny preset, fp32, CPU, one thread. Seven alternating rounds; in each, the harness's `sample()` and
a bare loop run the same number of steps on the same prepared step. Reported (extra_info and
stdout, with -s): the median over rounds of harness tokens/s (at the median step) / bare tokens/s
(steps / total time), and the same with the harness's mean. Not asserted: a timing, not a behaviour.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from teswap.benchmark.timing import PerfCounterTimer, TimingPolicy, sample, warm_up
from teswap.benchmark.workloads import make_input_ids, prepare_step, release
from teswap.swap.pair import build_pair

ROUNDS = 7
STEPS = 60


@pytest.mark.parametrize("workload", ["prefill", "train"])
def test_harness_matches_bare_loop(benchmark, workload: str) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pair = build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")
        ids = make_input_ids(pair.config.vocab_size, 2, 128, seed=0, device=torch.device("cpu"))
        step = prepare_step(workload, pair.stock, ids, backend="stock", precision="fp32")
        warm_up(step, 5, torch.device("cpu"))
        policy = TimingPolicy(warmup=0, min_samples=STEPS, max_samples=STEPS, budget_s=1e9)
        median_ratios, mean_ratios = [], []
        for _ in range(ROUNDS):
            stats = sample(step, policy, PerfCounterTimer())
            harness_median_tps = step.tokens_per_step / stats.median_s
            harness_mean_tps = step.tokens_per_step / stats.mean_s
            started = time.perf_counter()
            for _ in range(STEPS):  # the bare loop: nothing but the steps between two clock reads
                step()
            bare_tps = STEPS * step.tokens_per_step / (time.perf_counter() - started)
            median_ratios.append(harness_median_tps / bare_tps)
            mean_ratios.append(harness_mean_tps / bare_tps)
        benchmark.pedantic(step, rounds=STEPS, warmup_rounds=0)
        release(step)
    finally:
        torch.set_num_threads(previous)
    result = {"harness_median_vs_bare": statistics.median(median_ratios),
              "harness_mean_vs_bare": statistics.median(mean_ratios),
              "per_round_median_vs_bare": median_ratios}
    benchmark.extra_info.update(result)
    print(f"\n{workload}: harness(median)/bare = {result['harness_median_vs_bare']:.4f}, "
          f"harness(mean)/bare = {result['harness_mean_vs_bare']:.4f} over {ROUNDS} rounds of {STEPS} steps")

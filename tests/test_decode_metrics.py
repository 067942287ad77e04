"""Each decode metric's definition, pinned on a synthetic clock (benchmark/decode/metrics.py and steps.py, mfu.py)."""

from __future__ import annotations

import pytest
import torch

from support import MeterOnClock, llama
from teswap.benchmark.decode.metrics import decode_summary, percentile, step_timings
from teswap.benchmark.decode.steps import DecodeStep, HFCacheDecoder
from teswap.benchmark.decode.token_clock import HostTokenClock
from teswap.benchmark.mfu import ModelShape, flops_per_token
from teswap.benchmark.noise import NoisePolicy
from teswap.benchmark.plan import Cell
from teswap.benchmark.runner import CellContext, measure_cell
from teswap.benchmark.timing import PerfCounterTimer, TimingPolicy
from teswap.swap.pair import build_pair


def test_one_generations_timings_follow_the_fields_definitions():
    # marks: token 1 at 0.50 s (the prefill), then tokens 2..4
    timings = step_timings([0.50, 0.60, 0.75, 0.80])
    assert timings["ttft_s"] == 0.50
    assert timings["step_s"] == 0.80  # end to end
    assert timings["tpot_s"] == pytest.approx((0.80 - 0.50) / 3)  # (e2e - TTFT) / (N - 1)
    assert timings["itl_s"] == pytest.approx([0.10, 0.15, 0.05])  # gaps between later tokens, the first excluded
    with pytest.raises(ValueError, match="at least 2 tokens"):
        step_timings([0.5])


def test_a_cells_summary_takes_medians_pools_itls_and_counts_tokens():
    marks = [[0.2, 0.3, 0.4, 0.5], [0.4, 0.5, 0.7, 0.8], [0.3, 0.6, 0.7, 0.9]]  # three generations of N = 4
    per_step = [step_timings(m) for m in marks]
    timings = {name: [t[name] for t in per_step] for name in per_step[0]}
    summary = decode_summary(timings, batch=2, new_tokens=4)
    assert summary["ttft_s"] == pytest.approx(0.3)  # median of 0.2, 0.4, 0.3
    assert summary["tpot_s"] == pytest.approx(0.4 / 3)  # median of (0.3, 0.4, 0.6) / 3
    assert summary["decode_tokens_per_s"] == pytest.approx(2 * 3 / 0.4)  # batch x (N-1) / median decode time
    assert summary["e2e_tokens_per_s"] == pytest.approx(2 * 4 / 0.8)  # batch x N / median end to end
    itls = [0.1, 0.1, 0.1, 0.1, 0.2, 0.1, 0.3, 0.1, 0.2]
    assert summary["itl_p50_s"] == pytest.approx(0.1)
    assert summary["itl_p90_s"] == pytest.approx(percentile(itls, 90)) and summary["itl_p90_s"] == pytest.approx(0.22)
    assert summary["itl_p99_s"] == pytest.approx(0.292)
    with pytest.raises(ValueError, match="4 inter-token latencies"):
        decode_summary(timings, batch=2, new_tokens=5)


def test_percentiles_interpolate_linearly_between_order_statistics():
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 90, 99)] == pytest.approx([50.5, 90.1, 99.01])


class ScriptedClock:
    """A clock that only moves when the model runs: prefill_s per prompt forward, token_s per token forward."""

    def __init__(self, prefill_s: float, token_s: float) -> None:
        self.now, self.prefill_s, self.token_s = 0.0, prefill_s, token_s

    def __call__(self) -> float:
        return self.now

    def hook(self, module, args, kwargs):  # noqa: ANN001 - a forward pre-hook
        ids = args[0] if args else kwargs["input_ids"]
        self.now += self.prefill_s if ids.shape[1] > 1 else self.token_s


class ScriptedTimer(PerfCounterTimer):
    def __init__(self, clock: ScriptedClock) -> None:
        self.clock = clock

    def token_clock(self):  # noqa: ANN201
        return HostTokenClock(self.clock)


@pytest.fixture(scope="module")
def tiny_pair():
    return build_pair(llama(vocab_size=64), backend="torch", seed=2)


def test_a_decode_step_marks_ttft_at_the_prefill_and_each_token_after_its_forward(tiny_pair):
    model = tiny_pair.stock
    clock = ScriptedClock(prefill_s=0.25, token_s=0.01)
    handle = model.register_forward_pre_hook(clock.hook, with_kwargs=True)
    try:
        ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(0))
        step = DecodeStep(model=model, input_ids=ids, new_tokens=5, autocast=torch.no_grad,
                          decoder=HFCacheDecoder(model, cache_kind="dynamic", capacity=11))
        timings = step.timed(ScriptedTimer(clock))
    finally:
        handle.remove()
    assert timings["ttft_s"] == pytest.approx(0.25)
    assert timings["tpot_s"] == pytest.approx(0.01)
    assert timings["itl_s"] == pytest.approx([0.01] * 4)
    assert timings["step_s"] == pytest.approx(0.25 + 4 * 0.01)
    assert step.tokens_per_step == 3 * 5  # output tokens: batch x N
    metrics, record = step.summarize({name: [value] for name, value in timings.items()})
    assert metrics["decode_tokens_per_s"] == pytest.approx(3 * 4 / 0.04)
    assert metrics["e2e_tokens_per_s"] == pytest.approx(3 * 5 / 0.29)
    assert record["itl_s"] == [pytest.approx([0.01] * 4)] and record["cache"] == "dynamic"


def test_decode_flops_per_token_count_one_query_over_the_mean_context():
    shape = ModelShape.from_config(llama())  # 2 layers, hidden 64, 4 heads of 16, 2 KV heads, ffn 160, vocab 256
    matmul = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 160) + 256 * 64
    assert shape.matmul_params == matmul
    prompt, new = 100, 20  # decode forwards see 101 .. 119 keys: 110 on average
    assert flops_per_token(shape, prompt, "decode", new) == 2 * matmul + 4 * 2 * 4 * 16 * 110
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        flops_per_token(shape, prompt, "decode", 1)


def test_a_decode_cells_energy_per_output_token_is_the_counter_over_its_generations_output_tokens(tiny_pair):
    """Through the sweep's own measurement: a generation takes 0.25 s + 3 x 0.01 s at 300 W, so whatever the
    window's length, energy per output token is 300 W x 0.28 s / (batch 2 x 4 tokens) = 10.5 J."""
    model = tiny_pair.stock
    clock = ScriptedClock(prefill_s=0.25, token_s=0.01)
    handle = model.register_forward_pre_hook(clock.hook, with_kwargs=True)
    ctx = CellContext(policy=TimingPolicy(warmup=1, min_samples=3, max_samples=3, block_steps=1, budget_s=1e-9),
                      noise=NoisePolicy(remeasure=0), meter=MeterOnClock(clock, 300.0),
                      energy_null_reason=None, min_energy_window_s=1.0, clock=clock, timer=ScriptedTimer(clock))
    cell = Cell(model="tiny", workload="decode", backend="stock", precision="fp32", seq_len=6, batch=2, device="cpu",
                new_tokens=4)
    try:
        outcome = measure_cell(cell, model, ModelShape.from_config(model.config), ctx)
    finally:
        handle.remove()
    metrics = outcome.metrics
    assert outcome.status == "ok", outcome.reason
    assert metrics["energy_window_steps"] == 4  # generations until the window reached 1 s: 4 x 0.28 s
    assert metrics["energy_j"] == pytest.approx(300.0 * 4 * 0.28)
    assert metrics["energy_per_output_token_j"] == pytest.approx(300.0 * 0.28 / (2 * 4))
    assert metrics["ttft_s"] == pytest.approx(0.25) and metrics["tpot_s"] == pytest.approx(0.01)
    assert metrics["decode_tokens_per_s"] == pytest.approx(2 * 3 / 0.03)
    assert metrics["e2e_tokens_per_s"] == pytest.approx(2 * 4 / 0.28) == pytest.approx(metrics["tokens_per_s"])
    assert metrics["itl_p99_s"] == pytest.approx(0.01)

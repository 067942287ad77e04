"""Inference metrics of the decode workload, as the field defines them (vLLM, optimum-benchmark).

From one generation's token marks t_1 .. t_N (seconds from the start of the prefill to each token):

    ttft_s    t_1                           time to first token: the prefill and its argmax
    step_s    t_N                           end to end
    tpot_s    (t_N - t_1) / (N - 1)         time per output token after the first (decode time t_N - t_1
                                            over the N - 1 one-token forwards over the cache)
    itl_s     t_2 - t_1, ..., t_N - t_N-1   inter-token latencies (the first token has none)

Over a cell's timed generations (`decode_summary`): TTFT, TPOT and end to end are medians over the
generations; the ITL percentiles p50/p90/p99 pool every inter-token latency of every generation
(linear interpolation, numpy's default, as vLLM); decode tokens/s = batch x (N - 1) / median decode
time (median TPOT x (N - 1)); end-to-end tokens/s = batch x N / median end-to-end time. Energy per
output token is the energy window's joules over batch x N output tokens per generation (metrics.py);
the prefill's share is in it, as in vLLM's `gpu_energy_per_output_token_j`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

import numpy as np

from teswap.benchmark.timing import STEP_TIME, StepTimings
from teswap.store.records import DECODE_PHASES

PHASES = DECODE_PHASES  # timed inside each step, paired like the step time
SERIES = "itl_s"  # per-token series, kept per generation
ITL_PERCENTILES = (50, 90, 99)


def step_timings(marks_s: Sequence[float]) -> StepTimings:
    """One generation's timings from its token marks (seconds since the step started)."""
    if len(marks_s) < 2:
        raise ValueError(f"a decode step needs at least 2 tokens (TPOT divides by N - 1), got {len(marks_s)}")
    first, last = marks_s[0], marks_s[-1]
    return {STEP_TIME: last, "ttft_s": first, "tpot_s": (last - first) / (len(marks_s) - 1),
            SERIES: [later - earlier for earlier, later in zip(marks_s, marks_s[1:], strict=False)]}


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics."""
    if not values:
        raise ValueError("no values")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def decode_summary(timings: Mapping[str, Sequence], *, batch: int, new_tokens: int) -> dict[str, float]:
    """The cell's decode metrics (module docstring) from its generations' timings, one entry per generation."""
    ttft_s, tpot_s, step_s = timings["ttft_s"], timings["tpot_s"], timings[STEP_TIME]
    itl_s = [latency for generation in timings[SERIES] for latency in generation]
    if not (len(ttft_s) == len(tpot_s) == len(step_s) == len(timings[SERIES])) or not step_s:
        raise ValueError("need the same, non-zero number of generations in every timing")
    if any(len(generation) != new_tokens - 1 for generation in timings[SERIES]):
        raise ValueError(f"every generation must have {new_tokens - 1} inter-token latencies")
    median_tpot_s = statistics.median(tpot_s)
    median_decode_s = median_tpot_s * (new_tokens - 1)
    out = {"ttft_s": statistics.median(ttft_s), "tpot_s": median_tpot_s,
           "decode_tokens_per_s": batch * (new_tokens - 1) / median_decode_s,
           "e2e_tokens_per_s": batch * new_tokens / statistics.median(step_s)}
    out.update({f"itl_p{q}_s": percentile(itl_s, q) for q in ITL_PERCENTILES})
    return out

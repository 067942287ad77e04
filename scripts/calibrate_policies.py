"""Measure parity metrics of clean swaps over a spread of configs, seeds and shapes, per precision.

The model-level bounds in teswap.parity.policies are set from what this prints: the worst value of each
metric for the swapped model (a clean swap must pass with margin) and the worst ratio of the swapped
model's shortfall to the stock model's (for the relative-to-stock bounds). Run on CPU:

    .venv/bin/python scripts/calibrate_policies.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

from transformers import LlamaConfig

from teswap.parity.case import ParityCase, run_parity_case
from teswap.parity.rule import METRICS


def spread() -> dict[str, object]:
    def llama(**overrides) -> LlamaConfig:
        base = dict(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        return LlamaConfig(**(base | overrides))

    return {
        "tiny": "tiny",
        "tiny-llama3": "tiny-llama3",
        "mha-6layers": llama(num_key_value_heads=4, num_hidden_layers=6),
        "mqa-headdim48": llama(num_key_value_heads=1, head_dim=48),
        "wide-ffn": llama(hidden_size=192, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768),
        "yarn": llama(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                       "original_max_position_embeddings": 128}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed, one shape")
    args = parser.parse_args()
    shapes = [(2, 128)] if args.quick else [(1, 64), (2, 128), (1, 512)]
    seeds = [0] if args.quick else [0, 1, 2]
    worst: dict[str, dict[str, float]] = defaultdict(dict)
    ratio: dict[str, dict[str, float]] = defaultdict(dict)
    started, cases = time.perf_counter(), 0
    for precision in ("fp32", "bf16", "fp8-delayed", "fp8-current"):
        for name, source in spread().items():
            for seed in seeds:
                for batch, seq_len in shapes:
                    report = run_parity_case(ParityCase(source=source, precision=precision, seed=seed,
                                                        batch=batch, seq_len=seq_len))
                    cases += 1
                    if not report.passed:
                        print(f"  FAIL {precision} {name} seed={seed} {batch}x{seq_len}: {report.failure_summary()}")
                    _accumulate(worst[precision], ratio[precision], report.swapped, report.stock)
    print(f"{cases} clean cases in {time.perf_counter() - started:.0f} s\n")
    print(f"{'precision':12} {'metric':22} {'worst swapped':>14} {'worst ratio vs stock':>22}")
    for precision, values in worst.items():
        for metric, value in sorted(values.items()):
            print(f"{precision:12} {metric:22} {value:14.4g} {ratio[precision].get(metric, math.nan):22.3g}")


def _accumulate(worst: dict, ratio: dict, swapped: dict, stock: dict) -> None:
    for metric, value in swapped.items():
        kind, perfect = METRICS.get(metric, ("max", 0.0))
        pick = max if kind == "max" else min
        worst[metric] = pick(worst.get(metric, value), value)
        if math.isfinite(perfect) and metric in stock:
            ours, theirs = abs(value - perfect), abs(stock[metric] - perfect)
            if theirs > 0:
                ratio[metric] = max(ratio.get(metric, 0.0), ours / theirs)


if __name__ == "__main__":
    main()

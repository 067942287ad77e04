"""Every family at its published shape on the twin: the same model as stock at fp32 past its window, the
swap verdict at every precision, and the family's faults caught. CPU, random weights:

    .venv/bin/python scripts/check_families.py --json results/calibration/families-published.json

A published shape is the family preset's own (hidden size, heads, head_dim, vocabulary, window, RoPE)
at --layers decoder layers (2 by default: a 7B model's 32 layers at fp32 do not fit a 24 GiB CPU
machine beside its swapped copy and reference); a family mixing sliding and full layers keeps one of
each. fp32 equality is checked at a sequence one window plus 16 tokens long (the window crossed) and
by greedy decoding across the window; the verdicts at 1 x 256 tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from teswap import build_pair
from teswap.families import FAMILIES
from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.parity.mutations import MUTATIONS, applies_to, mutation
from teswap.store.provenance import capture_provenance
from teswap.swap.presets import PRESETS

PUBLISHED = {"llama": "llama3.2-1b", "mistral": "mistral-7b", "qwen2": "qwen2.5-0.5b", "qwen3": "qwen3-0.6b",
             "phi3": "phi3-mini", "gemma": "gemma-2b", "gemma3_text": "gemma3-1b"}
PRECISIONS = ("fp32", "bf16", "fp8-delayed", "fp8-current")
FAULTS = [name for name in MUTATIONS if name not in ("rope-base-10000", "layer-at-init")]


def published(family: str, layers: int):
    config = PRESETS[PUBLISHED[family]]()
    types = getattr(config, "layer_types", None)
    config.num_hidden_layers = layers
    if types:
        kinds = sorted(set(types), reverse=True)  # sliding first, then full
        config.layer_types = [kinds[i % len(kinds)] for i in range(layers)]
    return config


def window_of(config) -> int:
    family = FAMILIES[config.model_type]
    windows = [family.te_layer_kwargs(config, i).get("window_size") for i in range(config.num_hidden_layers)]
    return max((w[0] + 1 for w in windows if w), default=0)


@torch.no_grad()
def fp32_equality(config) -> dict:
    """logits relative error at one window + 16 tokens, and greedy tokens across the window."""
    window = window_of(config)
    pair = build_pair(config)
    seq = window + 16 if window else 512
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=generator)
    stock, swapped = pair.stock(ids).logits.double(), pair.swapped(ids).logits.double()
    rel = float((swapped - stock).abs().max() / stock.abs().max())
    prompt = ids[:, : max(window - 8, 8)]
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": 0}
    same = bool(torch.equal(pair.swapped.generate(prompt, **kwargs), pair.stock.generate(prompt, **kwargs)))
    del pair, stock, swapped
    gc.collect()
    return {"seq_len": seq, "window": window, "logits_rel_err": rel, "greedy_prompt": prompt.shape[1],
            "greedy_new_tokens": 24, "greedy_identical": same}


def case(config, precision: str, seq_len: int) -> ParityCase:
    # no gradients here: a 128k-262k vocabulary's embedding gradient in fp64 beside the pair is more than a
    # 24 GiB machine holds (the tiny presets' tests compare gradients)
    return ParityCase(source=config, precision=precision, seq_len=seq_len, batch=1, batches=1, gen_prompts=4,
                      gen_tokens=8, grads=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--families", default=",".join(PUBLISHED))
    parser.add_argument("--faults", default=",".join(FAULTS), help="the faults to plant (comma-separated)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens of the verdict cases (batch 1)")
    parser.add_argument("--no-verdicts", action="store_true", help="faults only (no fp32 check, no clean verdicts)")
    parser.add_argument("--json")
    args = parser.parse_args()
    started, rows = time.perf_counter(), []
    for family in args.families.split(","):
        config = published(family, args.layers)
        row: dict = {"family": family, "preset": PUBLISHED[family], "layers": args.layers, "seq_len": args.seq_len,
                     "fp32": None if args.no_verdicts else fp32_equality(config), "verdicts": {}, "faults": {}}
        print(f"{family:12} {PUBLISHED[family]:13} fp32 {row['fp32']}", flush=True)
        bf16, references = build_pair(config, dtype=torch.bfloat16), ReferenceCache()
        for precision in () if args.no_verdicts else PRECISIONS:
            pair = None if precision == "fp32" else bf16
            report = run_parity_case(case(config, precision, args.seq_len), pair=pair, references=references)
            row["verdicts"][precision] = {"passed": report.passed, "precision_verdict": report.precision_verdict,
                                          "failure": None if report.passed else report.failure_summary(),
                                          "rel_rms": [report.swapped["rel_rms"], report.stock["rel_rms"]]}
            print(f"{'':26} {precision:12} swap {'PASS' if report.passed else 'FAIL'}: "
                  f"rel_rms {report.swapped['rel_rms']:.3g} / {report.stock['rel_rms']:.3g}", flush=True)
        del bf16, references
        gc.collect()
        for fault in args.faults.split(","):
            # a window one key wider moves a wide window's output less than bf16's own noise: judged at fp32
            precision = {"fp8-skipped": "fp8-current", "window-off-by-one": "fp32"}.get(fault, "bf16")
            if not applies_to(fault, config):
                continue
            seq_len = args.seq_len
            if fault == "window-off-by-one":  # the fault shows only past the window
                seq_len = window_of(config) + 64
                if seq_len > 2112:
                    row["faults"][fault] = {"precision": precision, "caught": None,
                                            "how": f"not run: a {seq_len}-token case is beyond this script's budget"}
                    print(f"{'':26} fault {fault:18} not run at {seq_len} tokens", flush=True)
                    continue
            with mutation(fault, config):
                report = run_parity_case(case(config, precision, seq_len))
            row["faults"][fault] = {"precision": precision, "seq_len": seq_len, "caught": not report.passed,
                                    "how": None if report.passed else report.failure_summary()}
            print(f"{'':26} fault {fault:18} {precision:12} {'caught' if not report.passed else 'NOT CAUGHT'}",
                  flush=True)
        rows.append(row)
        gc.collect()
        if args.json:  # written after every family: a later one killed keeps the earlier ones
            write(args.json, args.layers, rows)
    print(f"{len(rows)} families in {time.perf_counter() - started:.0f} s")


def write(path: str, layers: int, rows: list[dict]) -> None:
    with open(path, "w") as handle:
        json.dump({"provenance": capture_provenance().to_dict(), "backend": "torch", "device": "cpu",
                   "layers": layers, "families": rows}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()

"""The MoE families on the twin (CPU, random weights, tiny presets): the swap verdict at each precision
with routing agreement, flips, per-expert token counts and aux loss, in both expert implementations,
and each MoE fault run through the verdict.

    .venv/bin/python scripts/check_moe.py --json results/calibration/moe-tiny.json

Every number is the torch backend's (the twin), on this machine's CPU, at the commit in the provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.parity.mutations import applies_to, mutation
from teswap.store.provenance import capture_provenance
from teswap.swap.presets import PRESETS

PRESET = {"mixtral": "tiny-mixtral", "qwen3_moe": "tiny-qwen3-moe"}
PRECISIONS = ("fp32", "bf16", "fp8-delayed", "fp8-current")
FAULTS = ("renormalisation-skipped", "experts-exchanged", "router-bf16", "norm-topk-prob-ignored", "gate-up-swapped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--faults-only", action="store_true")
    args = parser.parse_args(argv)
    shape = dict(seq_len=args.seq_len, batch=2, batches=1, gen_prompts=8, gen_tokens=4, grads=False)
    rows = []
    for family, preset in PRESET.items():
        for experts in () if args.faults_only else ("grouped", "hf"):
            references = ReferenceCache()
            for precision in PRECISIONS:
                start = time.perf_counter()
                report = run_parity_case(ParityCase(source=preset, precision=precision, experts=experts, **shape),
                                         references=references)
                routing = report.routing
                rows.append({"family": family, "experts": experts, "precision": precision, "fault": None,
                             "passed": report.passed, "agreement": routing["agreement"], "flips": routing["flips"],
                             "token_layers": routing["tokens"], "aux_loss_stock": routing["aux_loss_stock"],
                             "aux_loss_swapped": routing["aux_loss_swapped"],
                             "tokens_per_expert_swapped": routing["tokens_per_expert_swapped"],
                             "load_balance": routing["load_balance"], "seconds": time.perf_counter() - start})
                print(f"{family:10} {experts:7} {precision:11} {'PASS' if report.passed else 'FAIL'}  "
                      f"agreement {routing['agreement']:.4f} flips {routing['flips']:3d}/{routing['tokens']} "
                      f"aux stock {routing['aux_loss_stock']:.6f} swapped {routing['aux_loss_swapped']:.6f} "
                      f"balance {routing['load_balance']:.2f}", flush=True)
        if args.no_faults:
            continue
        config = PRESETS[preset]()
        for fault in FAULTS:
            if not applies_to(fault, config):
                continue
            for precision in ("fp32", "bf16"):
                with mutation(fault, config):
                    report = run_parity_case(ParityCase(source=preset, precision=precision,
                                                        **(shape | {"gen_prompts": 0})))
                rows.append({"family": family, "experts": "grouped", "precision": precision, "fault": fault,
                             "passed": report.passed, "agreement": report.routing["agreement"]})
                print(f"{family:10} fault {fault:24} {precision} "
                      f"{'PASS (not caught!)' if report.passed else 'FAIL (caught)'}  "
                      f"agreement {report.routing['agreement']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            record = {"provenance": capture_provenance().to_dict(), "backend": "torch", "device": "cpu", "rows": rows}
            json.dump(record, handle, indent=1, default=str)
    caught = all(not row["passed"] for row in rows if row["fault"] and row["precision"] == "fp32")
    clean = all(row["passed"] for row in rows if not row["fault"])
    return 0 if caught and clean else 1


if __name__ == "__main__":
    sys.exit(main())

"""Calibrate and check the tolerance policies: clean swaps must pass with margin, mutations must fail.

For every precision the torch backend emulates it runs clean swaps of random-init presets (random ids)
and of the trained SmolLM2-135M (real text), and prints per swap bound the worst clean ratio of
swapped to stock shortfall with its 95% interval, and per precision bound where stock lands (the
precision verdict). With --mutations it runs each deliberate fault of teswap.parity.mutations on the
real model and prints whether the swap verdict caught it. The policy slacks and floors in
teswap.parity.policies cite what this prints. CPU:

    .venv/bin/python scripts/calibrate_policies.py [--quick] [--mutations] [--json OUT]

With --families it runs the same for every model family: each family's tiny preset (random weights)
and SmolLM2-135M re-housed in the family's layout (`smollm2-135m-as-<family>`), clean, and under each
fault the family's swap can have (only those that break something in it):

    .venv/bin/python scripts/calibrate_policies.py --families --no-llama --mutations --json OUT

A part of the grid, e.g. the FP8 rows of two mutations only:

    .venv/bin/python scripts/calibrate_policies.py --no-clean --mutations --only rope-base-10000,fp8-skipped \
        --precisions fp8-delayed,fp8-current --json OUT
"""

from __future__ import annotations

import argparse
import json
import math
import time

from teswap.families import FAMILIES
from teswap.parity.case import ParityCase, run_parity_case
from teswap.parity.mutations import MUTATIONS, applies_to, mutation
from teswap.precision.table import get_precision
from teswap.store.provenance import capture_provenance
from teswap.swap.checkpoints import REHOUSED_FAMILIES
from teswap.swap.presets import PRESETS

PRECISIONS = ("fp32", "bf16", "fp8-delayed", "fp8-current", "fp8-block", "mxfp8", "nvfp4")
REAL = "smollm2-135m"


def clean_cases(quick: bool, precisions: tuple[str, ...] = PRECISIONS) -> list[ParityCase]:
    """Random-init presets at two shapes and seeds, and the real model at two shapes."""
    cases = []
    for precision in precisions:
        for source in ("tiny", "tiny-llama3"):
            for seed in (0,) if quick else (0, 1):
                for batch, seq_len in ((2, 128),) if quick else ((2, 64), (2, 128)):
                    cases.append(ParityCase(source=source, precision=precision, seed=seed, batch=batch,
                                            seq_len=seq_len))
        for batch, seq_len in ((2, 64),) if quick else ((2, 64), (2, 128)):
            cases.append(ParityCase(source=REAL, precision=precision, batch=batch, seq_len=seq_len))
    return cases


def mutation_cases(names: tuple[str, ...] = tuple(MUTATIONS),
                   precisions: tuple[str, ...] = PRECISIONS) -> list[tuple[str, ParityCase]]:
    """Every mutation at every precision it applies to, on the real model at a short shape."""
    from teswap.swap.sources import resolve_source

    config, out = resolve_source(REAL).config, []
    for name in names:
        if not applies_to(name, config):
            continue  # a family's own fault (a window, a bias) that a Llama has nothing to break for
        for precision in precisions:
            if name == "fp8-skipped" and not get_precision(precision).is_fp8:
                continue  # nothing to skip
            out.append((name, ParityCase(source=REAL, precision=precision, batch=2, seq_len=64, batches=1,
                                         gen_prompts=16, gen_tokens=12)))
    return out


def family_sources() -> list[str]:
    """Each family's tiny preset (not Llama's: clean_cases has it), and SmolLM2 re-housed where offered."""
    tiny = [name for name in PRESETS if name.startswith("tiny-") and name != "tiny-llama3"]
    return [*tiny, *(f"{REAL}-as-{family}" for family in REHOUSED_FAMILIES)]


def family_clean_cases(quick: bool, precisions: tuple[str, ...] = PRECISIONS) -> list[ParityCase]:
    """Every family's sources at every precision: the tiny presets at two seeds and shapes, the real text at one."""
    cases = []
    for precision in precisions:
        for source in family_sources():
            real = source.startswith(REAL)
            seeds = (0,) if quick or real else (0, 1)
            for seed in seeds:
                for batch, seq_len in ((2, 64),) if quick or real else ((2, 64), (2, 128)):
                    cases.append(ParityCase(source=source, precision=precision, seed=seed, batch=batch,
                                            seq_len=seq_len))
    return cases


def family_mutation_cases(names: tuple[str, ...], precisions: tuple[str, ...]) -> list[tuple[str, ParityCase]]:
    """Every fault on every family source it breaks something in, at every precision it applies to."""
    from teswap.swap.sources import resolve_source

    out = []
    for source in family_sources():
        config = resolve_source(source).config
        for name in names:
            if name == "rope-base-10000" or not applies_to(name, config):
                continue  # rope-base-10000: the Llama grid has it (a tiny preset's theta may be 1e4)
            for precision in precisions:
                if name == "fp8-skipped" and not get_precision(precision).is_fp8:
                    continue
                out.append((name, ParityCase(source=source, precision=precision, batch=2, seq_len=64, batches=1,
                                             gen_prompts=16, gen_tokens=12)))
    return out


def summarise(report) -> dict:
    case = report.case
    return {"model": case.source_name, "precision": case.precision, "shape": f"{case.batch}x{case.seq_len}",
            "seed": case.seed, "passed": report.passed, "precision_verdict": report.precision_verdict,
            "failure": None if report.passed else report.failure_summary(),
            "swap": {row.bound: {"ratio": row.ratio, "ci": row.ratio_ci, "passed": row.passed}
                     for row in report.verdict.rows},
            "absolute": {row.bound: {"swapped": row.value, "stock": row.stock_value, "stock_passed": row.stock_passed}
                         for row in report.verdict.precision_rows},
            "perplexity": report.perplexity, "generation": report.generation}


def print_clean(rows: list[dict]) -> None:
    print(f"\n{'precision':12} {'bound':30} {'worst clean ratio':>18} {'its CI high':>12} {'fails':>6}")
    for precision in PRECISIONS:
        subset = [r for r in rows if r["precision"] == precision]
        for bound in subset[0]["swap"] if subset else ():
            ratios = [(r["swap"][bound]["ratio"], (r["swap"][bound]["ci"] or (math.nan, math.nan))[1])
                      for r in subset if r["swap"][bound]["ratio"] is not None]
            worst = max(ratios, default=(math.nan, math.nan))
            fails = sum(not r["swap"][bound]["passed"] for r in subset)
            print(f"{precision:12} {bound:30} {worst[0]:18.3g} {worst[1]:12.3g} {fails:6d}")
    print(f"\n{'precision':12} {'model':14} {'bound':22} {'stock':>11} {'swapped':>11} {'stock fit':>9}")
    for row in rows:
        if row["seed"] == 0:
            for bound, values in row["absolute"].items():
                print(f"{row['precision']:12} {row['model']:14} {bound:22} {values['stock']:11.4g} "
                      f"{values['swapped']:11.4g} {str(values['stock_passed']):>9}")


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {','.join(allowed)}")
        return names
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, one shape")
    parser.add_argument("--mutations", action="store_true", help="also run every mutation on the real model")
    parser.add_argument("--json", help="write every case's summary here")
    parser.add_argument("--no-clean", action="store_true", help="skip the clean swaps (with --mutations)")
    parser.add_argument("--precisions", type=_names(PRECISIONS), default=PRECISIONS,
                        help=f"comma-separated subset of {','.join(PRECISIONS)}")
    parser.add_argument("--only", type=_names(tuple(MUTATIONS)), default=tuple(MUTATIONS),
                        help=f"comma-separated subset of the mutations: {','.join(MUTATIONS)}")
    parser.add_argument("--families", action="store_true", help=f"also every family: {', '.join(FAMILIES)}")
    parser.add_argument("--no-llama", action="store_true", help="with --families: leave out the Llama grid")
    args = parser.parse_args()
    started, rows = time.perf_counter(), []
    clean = [] if args.no_clean or args.no_llama else clean_cases(args.quick, args.precisions)
    if args.families and not args.no_clean:
        clean += family_clean_cases(args.quick, args.precisions)
    for case in clean:
        report = run_parity_case(case)
        rows.append(summarise(report))
        verdict = "PASS" if report.passed else "FAIL " + report.failure_summary()
        print(f"clean {case.source_name:12} {case.precision:12} {case.batch}x{case.seq_len} seed {case.seed}: "
              f"{verdict} (precision {report.precision_verdict})")
    if rows:
        print_clean(rows)
    caught = []
    if args.mutations:
        faults = [] if args.no_llama else mutation_cases(args.only, args.precisions)
        if args.families:
            faults += family_mutation_cases(args.only, args.precisions)
        for name, case in faults:
            with mutation(name):
                report = run_parity_case(case)
            caught.append({"mutation": name, **summarise(report)})
            outcome = "NOT CAUGHT" if report.passed else "caught: " + report.failure_summary()
            print(f"mutation {name:16} {case.source_name:24} {case.precision:12}: {outcome}")
    print(f"\n{len(rows)} clean cases, {len(caught)} mutations in {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"provenance": capture_provenance().to_dict(), "backend": "torch", "quick": args.quick,
                       "families": args.families, "llama": not args.no_llama,
                       "precisions": list(args.precisions), "mutations_run": list(args.only) if args.mutations else [],
                       "clean": rows, "mutations": caught}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()

"""`teswap check`: parity of the swapped model against stock at one precision; exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

from teswap.commands.args import add_parallel_arguments, non_negative_int, positive_int
from teswap.precision.table import PRECISIONS

# --json names the logits metrics as the issue tracker and dashboards expect them.
_JSON_NAMES = {"max_abs": "logits_max_abs", "mean_abs": "logits_mean_abs", "robust_rel": "logits_robust_rel",
               "cosine": "logits_cosine", "sqnr_db": "logits_sqnr_db"}


def register(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser("check", help="parity of the swapped model vs stock at one precision")
    check.add_argument("--model", default="tiny",
                       help="preset, named checkpoint (smollm2-135m), local HF/hub-cache directory or .gguf file")
    check.add_argument("--backend", choices=("torch", "te"), default="torch")
    check.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    check.add_argument("--seq-len", type=positive_int, default=128)
    check.add_argument("--batch", type=positive_int, default=2)
    check.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--fuse-qkv", action="store_true", help="TE's fused QKV weight layout")
    check.add_argument("--experts", choices=("grouped", "hf"),
                       help="an MoE model's expert implementation: TE's grouped experts (default) or HF's own block")
    check.add_argument("--policy", help="policy name or JSON file (default: the precision's own policy)")
    check.add_argument("--tol", action="append", default=[], metavar="BOUND=VALUE",
                       help="override one bound, e.g. --tol kl_div=1e-3 (repeatable)")
    check.add_argument("--batches", type=positive_int, default=2,
                       help="distinct input batches (more text: tighter intervals on the swap verdict)")
    check.add_argument("--gen-prompts", type=non_negative_int, default=16, help="prompts to decode greedily (0: skip)")
    check.add_argument("--gen-tokens", type=non_negative_int, default=24, help="greedy tokens per prompt (0: skip)")
    check.add_argument("--no-grads", action="store_true", help="skip the loss/gradient comparison")
    check.add_argument("--beyond-max-positions", action="store_true",
                       help="allow a --seq-len past the model's max_position_embeddings (recorded in the case)")
    check.add_argument("--mutate", metavar="NAME",
                       help="run with a deliberate fault in the swap (gate-up-swapped, layer-at-init, rope-base-10000, "
                            "fp8-skipped, qkv-bias-dropped, window-off-by-one, qk-norm-skipped, gamma-not-centred, "
                            "renormalisation-skipped, experts-exchanged, router-bf16, norm-topk-prob-ignored; "
                            "teswap.parity.mutations) to see the check catch it: expect exit 1; nothing is recorded")
    check.add_argument("--json", type=Path, help="also write the report as JSON here")
    check.add_argument("--results", type=Path, default=Path("results"), help="results store to append the record to")
    check.add_argument("--no-record", action="store_true", help="do not append a record to the results store")
    add_parallel_arguments(check)
    check.add_argument("--checkpoint", type=Path, metavar="DIR",
                       help="under a sharded plan: also save the sharded pair here with torch.distributed.checkpoint, "
                            "load it into another seed's sharded pair and require every tensor equal")


def main(args: argparse.Namespace) -> int:
    from teswap.distributed.launch import under_torchrun

    if args.parallel != "replicas" or under_torchrun():
        return _sharded(args)
    return _single(args)


def _sharded(args: argparse.Namespace) -> int:
    """Under torchrun: the plan exact on stock, the swap as close to stock sharded as unsharded (rank 0 prints)."""
    from teswap.distributed.faults import launch_faults, rank_zero_output
    from teswap.distributed.launch import launch
    from teswap.distributed.parity import check_sharded

    with launch(args.parallel, device=args.device, tp_size=args.tp_size) as parallel, launch_faults(parallel), \
            rank_zero_output(parallel):
        result = check_sharded(args.model, parallel=parallel, backend=args.backend, precision=args.precision,
                               seq_len=args.seq_len, batch=args.batch, seed=args.seed, checkpoint=args.checkpoint)
        print(result.text())
        if args.json and parallel.rank == 0:
            args.json.write_text(json.dumps(result.to_dict(), indent=2, allow_nan=True))
        if not args.no_record and parallel.rank == 0:  # the rows are the worst over the ranks already
            from teswap.store.provenance import capture_provenance
            from teswap.store.runs import open_run

            case = {"model": args.model, "backend": args.backend, "precision": args.precision,
                    "device": str(parallel.device), "seq_len": args.seq_len, "batch": args.batch, "seed": args.seed}
            writer = open_run(args.results, capture_provenance())
            writer.write(result.record(case))
            print(f"record: {writer.path}")
        return 0 if result.passed else 1


def _single(args: argparse.Namespace) -> int:
    from teswap.hardware.probe import default_device
    from teswap.parity.case import ParityCase, run_parity_case
    from teswap.parity.mutations import mutation
    from teswap.parity.policy_files import get_policy, override, parse_overrides
    from teswap.parity.text import report_text

    policy = get_policy(args.policy or args.precision)
    if args.tol:
        policy = override(policy, parse_overrides(args.tol))
    device = args.device or default_device()
    case = ParityCase(source=args.model, backend=args.backend, precision=args.precision, seq_len=args.seq_len,
                      batch=args.batch, batches=args.batches, seed=args.seed, device=device, fuse_qkv=args.fuse_qkv,
                      gen_prompts=args.gen_prompts, gen_tokens=args.gen_tokens, grads=not args.no_grads,
                      beyond_max_positions=args.beyond_max_positions, experts=args.experts)
    if args.mutate:
        from teswap.swap.sources import resolve_source

        fault = mutation(args.mutate, resolve_source(args.model).config)  # refused where it breaks nothing
    with fault if args.mutate else nullcontext():
        report = run_parity_case(case, policy)
    print(report_text(report) + (f"\n(mutation {args.mutate}: a FAIL is the expected outcome)" if args.mutate else ""))
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=2, allow_nan=True))
    if not args.no_record and not args.mutate:
        record_path = append_record(report, args.results)
        print(f"record: {record_path}")
    return 0 if report.passed else 1


def to_json(report) -> dict:
    """--json: passed (the swap verdict), precision_verdict, metrics of swapped and of stock, every row."""
    def rename(metrics: dict) -> dict:
        return {_JSON_NAMES.get(k, k): v for k, v in metrics.items()}

    record = report.record()
    return {"passed": report.passed, "precision": report.case.precision, "backend": report.case.backend,
            "policy": report.verdict.policy, "metrics": rename(report.swapped), "stock_metrics": rename(report.stock),
            "first_divergent_layer": report.first_divergent_layer, "case": record.case,
            "reference_dtype": report.reference_dtype, "verdict_rows": record.verdict_rows,
            "layer_errors": record.layer_errors, "precision_verdict": record.precision_verdict,
            "precision_rows": record.precision_rows, "perplexity": record.perplexity,
            "generation": record.generation, "inputs": record.inputs,
            **({"routing": record.routing} if record.routing else {})}


def append_record(report, root: Path) -> Path:
    """Append this case's parity record to the results store; returns the run file."""
    from teswap.store.provenance import capture_provenance
    from teswap.store.runs import open_run

    writer = open_run(root, capture_provenance())
    writer.write(report.record())
    return writer.path

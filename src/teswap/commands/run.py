"""`teswap run`: the main job (environment, parity, benchmark sweep, store, table and charts)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from teswap.commands.args import add_parallel_arguments, int_list, name_list


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the main job: parity at every precision, the benchmark sweep, the report")
    run.add_argument("--model", help="preset or local directory with config.json (default: by hardware)")
    run.add_argument("--backend", choices=("torch", "te"), help="swapped backend (default: by hardware)")
    run.add_argument("--precision", type=name_list,
                     help="comma-separated precisions (default: the base dtype and every FP8 recipe)")
    run.add_argument("--seq-lens", type=int_list, help="benchmark sequence lengths, e.g. 512,1024")
    run.add_argument("--batch", type=int_list, help="benchmark batch sizes, e.g. 1,2")
    run.add_argument("--device", help="cpu or cuda[:N] (default: cuda if present)")
    run.add_argument("--results", "--out", dest="results", type=Path, default=Path("results"), metavar="DIR",
                     help="the results store, as in every teswap command (records are appended; the report goes "
                          "to DIR/report); --out is the old name, kept as an alias")
    run.add_argument("--skip-bench", action="store_true", help="parity only")
    run.add_argument("--beyond-max-positions", action="store_true",
                     help="measure --seq-lens past the model's max_position_embeddings (else refused; cells record it)")
    add_parallel_arguments(run)


def main(args: argparse.Namespace) -> int:
    from teswap.distributed.faults import launch_faults, rank_zero_output
    from teswap.distributed.launch import launch
    from teswap.job import plan_run, run_job

    started = time.perf_counter()
    with launch(args.parallel, device=args.device, tp_size=args.tp_size) as parallel, launch_faults(parallel), \
            rank_zero_output(parallel):
        device = str(parallel.device) if parallel.distributed else args.device
        plan = plan_run(model=args.model, backend=args.backend, precisions=args.precision, seq_lens=args.seq_lens,
                        batches=args.batch, device=device, results=args.results,
                        beyond_max_positions=args.beyond_max_positions)
        code = run_job(plan, bench=not args.skip_bench, parallel=parallel if parallel.distributed else None)
        print(f"teswap run: finished in {time.perf_counter() - started:.1f} s (exit {code})")
    return code

"""`teswap run`: the main job."""

from __future__ import annotations

import argparse
import time

from teswap.cli import positive_int

DTYPES = ("fp32", "bf16", "fp16")


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the main job: build the pair and check parity")
    run.add_argument("--model", help="preset name or local directory with config.json (default: by hardware)")
    run.add_argument("--backend", choices=("torch", "te"), help="swapped layer backend (default: by hardware)")
    run.add_argument("--dtype", choices=DTYPES, help="model dtype (default: fp32 on CPU, bf16 on GPU)")
    run.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    run.add_argument("--seq-len", type=positive_int, default=128)
    run.add_argument("--batch", type=positive_int, default=2)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--fuse-qkv", action="store_true", help="use TE's fused QKV weight layout")


def main(args: argparse.Namespace) -> int:
    from teswap.run import choose_run_options, run_parity

    options = choose_run_options(
        model=args.model, backend=args.backend, dtype=args.dtype, device=args.device,
        seq_len=args.seq_len, batch=args.batch, seed=args.seed, fuse_qkv=args.fuse_qkv,
    )
    print(f"teswap run: {options.describe()}")
    started = time.perf_counter()
    result = run_parity(options)
    print(result.table())
    print(f"verdict: {'PASS' if result.passed else 'FAIL'} ({time.perf_counter() - started:.2f} s)")
    return 0 if result.passed else 1

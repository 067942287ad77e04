"""The `teswap` command line: `teswap env`, `teswap run`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from teswap.errors import TeswapError

DTYPES = ("fp32", "bf16", "fp16")


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"teswap: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="teswap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    env = sub.add_parser("env", help="machine, library versions and backend availability")
    env.add_argument("--json", action="store_true", help="print JSON instead of text")
    run = sub.add_parser("run", help="the main job: build the pair and check parity")
    run.add_argument("--model", help="preset name or local directory with config.json (default: by hardware)")
    run.add_argument("--backend", choices=("torch", "te"), help="swapped layer backend (default: by hardware)")
    run.add_argument("--dtype", choices=DTYPES, help="model dtype (default: fp32 on CPU, bf16 on GPU)")
    run.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    run.add_argument("--seq-len", type=_positive_int, default=128)
    run.add_argument("--batch", type=_positive_int, default=2)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--fuse-qkv", action="store_true", help="use TE's fused QKV weight layout")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `teswap` script; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "env":
            return _cmd_env(args)
        return _cmd_run(args)
    except TeswapError as err:
        print(f"teswap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teswap: interrupted", file=sys.stderr)
        return 130


def _cmd_env(args: argparse.Namespace) -> int:
    from teswap.environment import describe_environment

    report = describe_environment()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for section, values in report.items():
            print(f"{section}:")
            for key, value in values.items():
                print(f"  {key}: {value}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
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




if __name__ == "__main__":
    sys.exit(main())

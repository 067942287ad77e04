"""The `teswap` command line. Each subcommand lives in teswap/commands/<name>.py with
`register(subparsers)` and `main(args) -> int`; this module only dispatches and turns errors into
one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from teswap.commands.args import Parser
from teswap.commands.quiet import quiet_libraries
from teswap.errors import TeswapError


def _commands() -> dict[str, ModuleType]:
    from teswap.commands import bench, check, compare, env, report, run

    return {"env": env, "run": run, "check": check, "bench": bench, "report": report, "compare": compare}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="teswap", description="HF vs TE decoder layers: same outputs? how much faster?")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in _commands().values():
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `teswap` script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        with quiet_libraries():  # transformers' bars and warnings would interleave with teswap's output
            return _commands()[args.command].main(args)
    except TeswapError as err:
        print(f"teswap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teswap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `teswap` command line. Each subcommand lives in teswap/commands/<name>.py with
`register(subparsers)` and `main(args) -> int`; this module only dispatches and turns errors into
one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from teswap.errors import TeswapError


class Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"teswap: error: {message}", file=sys.stderr)
        raise SystemExit(2)


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
        return _commands()[args.command].main(args)
    except TeswapError as err:
        print(f"teswap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teswap: interrupted", file=sys.stderr)
        return 130


def _checked(convert: Callable[[str], Any], accept: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse type: `convert(text)`, refused unless `accept(value)`; the error says what was wanted."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not accept(value):  # `not v >= 0` also refuses nan
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    return parse


positive_int = _checked(int, lambda v: v > 0, "a positive integer")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: v > 0, "a number > 0")
non_negative_float = _checked(float, lambda v: v >= 0, "a number >= 0")


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, e.g. 128,512,2048."""
    return [positive_int(part.strip()) for part in text.split(",") if part.strip()] or [positive_int(text)]


def name_list(text: str) -> list[str]:
    """argparse type: comma-separated names, e.g. prefill,train."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


if __name__ == "__main__":
    sys.exit(main())

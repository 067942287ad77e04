"""What every subcommand's flags share: a parser whose errors are one line and exit 2, and argparse types.

Subcommands import these from here, not from `teswap.cli`, so the command line's dispatcher imports
the subcommands and nothing imports it back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"teswap: error: {message}", file=sys.stderr)
        raise SystemExit(2)


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


PARALLEL_PLANS = ("replicas", "fsdp", "tp", "fsdp+tp")  # teswap.distributed.launch.PLANS, kept import-free here


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """--parallel and --tp-size: how a torchrun launch splits the pair over its ranks (docs/distributed.md)."""
    group = parser.add_argument_group("more than one process (under torchrun; docs/distributed.md)")
    group.add_argument("--parallel", choices=PARALLEL_PLANS, default="replicas",
                       help="replicas: every rank a whole pair (default); fsdp: FSDP2 on both sides; tp: tensor "
                            "parallel on both sides; fsdp+tp: a 2-D mesh")
    group.add_argument("--tp-size", type=positive_int, help="fsdp+tp: the tensor-parallel degree (default 2)")

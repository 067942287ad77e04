"""`teswap env`: machine, library versions, backend availability with reasons."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="machine, library versions and backend availability")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def main(args: argparse.Namespace) -> int:
    from teswap.environment import describe_environment

    report = describe_environment()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for section, values in report.items():
        print(f"{section}:")
        for key, value in values.items():
            print(f"  {key}: {value}")
    return 0

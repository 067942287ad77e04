"""`teswap env`: machine, library versions, backend availability with reasons."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="machine, library versions and backend availability")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe_environment() -> dict[str, dict[str, Any]]:
    """Sections (machine, libraries, git, backends) of plain values, for text or JSON output."""
    from teswap.hardware.probe import probe_te_fp8
    from teswap.layers.backends import BACKENDS
    from teswap.store.provenance import capture_provenance

    prov = capture_provenance()
    backends: dict[str, Any] = {}
    for name, backend in BACKENDS.items():
        availability = backend.probe()
        backends[name] = "available" if availability else f"unavailable: {availability.reason}"
    fp8 = probe_te_fp8()
    backends["te fp8"] = "available" if fp8 else f"unavailable: {fp8.reason}"
    return {
        "machine": asdict(prov.machine),
        "libraries": asdict(prov.libraries),
        "git": asdict(prov.git),
        "backends": backends,
    }


def main(args: argparse.Namespace) -> int:
    report = describe_environment()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for section, values in report.items():
        print(f"{section}:")
        for key, value in values.items():
            print(f"  {key}: {value}")
    return 0

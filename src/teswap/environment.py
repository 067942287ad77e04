"""`teswap env`: what this machine is, which libraries it has, which backends can run and why not."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from teswap.layers.backends import BACKENDS
from teswap.hardware.probe import probe_te_fp8
from teswap.store.provenance import capture_provenance


def describe_environment() -> dict[str, dict[str, Any]]:
    """Sections (machine, libraries, git, backends) of plain values, for text or JSON output."""
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

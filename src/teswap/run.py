"""`teswap run`, the main job: environment, parity at every precision the hardware runs, the benchmark
sweep, everything appended to the results store, then the published table and charts.

It picks the best setup for the machine and says what it picked and why: on a CPU the tiny preset
with the `torch` backend; on a GPU with TE an 8B-shaped sweep with `te` and the `torch` FP8 twin
beside it (parity on the Llama-3.2-1B shape, whose fp32 reference and gradients fit beside the pair);
on a GPU without TE the `torch` backend with real FP8 GEMMs. Flags override every choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from teswap.layers.backends import get_backend
from teswap.errors import TeswapError
from teswap.precision.runtime import PRECISIONS, precision_availability
from teswap.hardware.probe import probe_te
from teswap.swap.sources import resolve_source


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What `teswap run` will do, and why each default was chosen."""

    device: str
    parity_model: str
    bench_model: str
    backends: tuple[str, ...]  # swapped backends; the sweep adds the stock model
    precisions: tuple[str, ...]
    parity_shape: tuple[int, int]  # (batch, seq_len)
    seq_lens: tuple[int, ...] | None  # None: the sweep's hardware default
    batches: tuple[int, ...] | None
    results: Path
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"device={self.device} parity model={self.parity_model} bench model={self.bench_model} "
                f"backends={','.join(self.backends)} precisions={','.join(self.precisions)} results={self.results}"
                f"\n  why: {'; '.join(self.reasons)}")


def plan_run(*, model: str | None, backend: str | None, precisions: list[str] | None, seq_lens: list[int] | None,
             batches: list[int] | None, device: str | None, out: Path) -> RunPlan:
    """Defaults by hardware, each with its reason; flags override. Bad names fail here, before any work."""
    reasons: list[str] = []
    cuda = torch.cuda.is_available()
    device = device or ("cuda" if cuda else "cpu")
    on_gpu = device.startswith("cuda")
    if on_gpu and not cuda:
        raise TeswapError(f"--device {device}: no CUDA device here")
    te = probe_te()
    if backend is not None:
        get_backend(backend).require()  # asked for by name: unavailable is an error, not a skip
        backends: tuple[str, ...] = (backend,)
    elif on_gpu and te:
        backends = ("te", "torch")
        reasons.append("TE available: te backend, with the torch FP8 twin beside it")
    else:
        backends = ("torch",)
        why = "" if te else f"; te unavailable: {te.reason}"
        reasons.append("torch backend" + ("" if on_gpu else " (no GPU)") + why)
    if model is None:
        parity_model, bench_model = ("llama3.2-1b", "llama3-8b") if on_gpu else ("tiny", "tiny")
        reasons.append("GPU: parity on the llama3.2-1b shape, sweep on the llama3-8b shape" if on_gpu
                       else "CPU: the tiny preset (the whole job in well under a minute)")
    else:
        parity_model = bench_model = model
    for source in {parity_model, bench_model}:
        resolve_source(source)
    if precisions is None:
        base = "bf16" if on_gpu else "fp32"
        precisions = [base, *(p for p in PRECISIONS if p != base and (p != "fp32" or not on_gpu))]
        reasons.append(f"precisions: {base} and every FP8 recipe; those this hardware cannot run are "
                       "recorded as skipped")
    for name in precisions:
        if name not in PRECISIONS:
            raise TeswapError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}")
    shape = (1, 2048) if on_gpu else (2, 128)
    return RunPlan(device=device, parity_model=parity_model, bench_model=bench_model, backends=backends,
                   precisions=tuple(precisions), parity_shape=shape, seq_lens=tuple(seq_lens) if seq_lens else None,
                   batches=tuple(batches) if batches else None, results=out, reasons=reasons)


def parity_cases(plan: RunPlan):
    """(backend, precision, availability) for every parity case of the plan."""
    for backend in plan.backends:
        for precision in plan.precisions:
            yield backend, precision, precision_availability(precision, backend, plan.device)

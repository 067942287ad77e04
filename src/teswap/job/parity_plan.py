"""The parity cases of a run: one per (timed model, backend, precision), on that model, sized for the machine.

A speed figure is only as good as the verdict beside it, so each (model, backend, precision) the sweep
times gets a case on that same model, as does every precision the job checks without timing it. A case
is sized for where it runs (a short real-text case of the trained model on a CPU, 2048 tokens on a GPU),
and its peak (stock, swapped and the reference model; the reference's kept outputs and gradients;
teswap.benchmark.memory_estimate) is estimated before anything is built. Where it does not fit the free
memory, in this order:

1. the same case without the gradient comparison (the gradients kept are its largest part);
2. else a smaller model of the same family and RoPE scheme (PROXIES) is checked in its place, its case
   naming the timed model it stands for, so the published table marks the verdict as borrowed;
3. else the case is recorded as skipped, with the estimate and the free memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from teswap.benchmark.memory_estimate import GIB, MemoryEstimate, estimate_parity, fits, refusal
from teswap.benchmark.mfu import ModelShape
from teswap.hardware.free_memory import free_memory
from teswap.parity.case import ParityCase, reference_dtype_for
from teswap.precision.runtime import precision_availability
from teswap.precision.table import get_precision
from teswap.swap.sources import resolve_source

# A timed preset -> a smaller one of the same family and RoPE scheme, checked in its place when its own case
# cannot fit (llama3-8b's fp32 reference and gradients do not fit beside its pair on an 80 GB GPU).
PROXIES = {"llama3-8b": "llama3.2-1b"}


@dataclass(frozen=True, kw_only=True)
class PlannedCase:
    """A parity case of the plan, and why it cannot run here (None: it runs)."""

    case: ParityCase
    skip: str | None = None


def parity_cases(models: tuple[str, ...], backends: tuple[str, ...], precisions: tuple[str, ...],
                 template: Callable[[str], ParityCase], reasons: list[str]) -> tuple[PlannedCase, ...]:
    """A case per (model, backend, precision), each fitted to the free memory; why any was resized, in `reasons`."""
    notes: dict[str, None] = {}
    planned = []
    for model in models:
        for backend in backends:
            for precision in precisions:
                case = replace(template(model), backend=backend, precision=precision)
                availability = precision_availability(precision, backend, case.device)
                planned.append(fitted(case, template, notes) if availability
                               else PlannedCase(case=case, skip=availability.reason))
    reasons.extend(notes)
    return tuple(planned)


def case_estimate(case: ParityCase) -> MemoryEstimate:
    """The estimated peak of `case` (teswap.benchmark.memory_estimate.estimate_parity)."""
    device = torch.device(case.device)
    return estimate_parity(ModelShape.from_config(resolve_source(case.source).config),
                           model_dtype=get_precision(case.precision).model_dtype,
                           reference_dtype=reference_dtype_for(device, case.precision), batch=case.batch,
                           seq_len=case.seq_len, batches=case.batches, grads=case.grads)


def fitted(case: ParityCase, template: Callable[[str], ParityCase], notes: dict[str, None]) -> PlannedCase:
    """`case` if it fits; else without gradients; else its model's proxy standing in; else skipped, saying why."""
    free = free_memory(torch.device(case.device))
    full = case_estimate(case)
    if fits(full.total_bytes, free):
        return PlannedCase(case=case)
    assert free.bytes is not None
    what = (f"parity on {case.source_name} at {case.seq_len} tokens needs ~{full.total_bytes / GIB:.1f} GiB, more "
            f"than fits in {free.bytes / GIB:.1f} GiB free ({free.method})")
    lighter = replace(case, grads=False)
    if case.grads and fits(case_estimate(lighter).total_bytes, free):
        notes[f"{what}: checked without the gradient comparison"] = None
        return PlannedCase(case=lighter)
    proxy = PROXIES.get(case.source_name)
    if proxy is not None:
        notes[f"{what}: {proxy} is checked in its place (the table marks the verdict)"] = None
        stand_in = replace(template(proxy), backend=case.backend, precision=case.precision,
                           stands_for=case.source_name)
        return fitted(stand_in, template, notes)
    return PlannedCase(case=case, skip=refusal(f"parity on {case.source_name}", full, full.total_bytes, free))

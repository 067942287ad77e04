"""Precisions as the CLI spells them, what each needs, and how to run the swapped model at one.

fp32 and bf16 are model dtypes. The FP8 precisions keep bf16 weights and activations and run the
four GEMMs of every swapped layer in FP8 under a recipe, as TE does: through teswap.precision.fp8 on the
`torch` backend, through `te.pytorch.autocast(recipe=...)` on the `te` backend. A precision a backend
or GPU cannot run is refused with the reason, never run at another precision.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from teswap.precision import fp8
from teswap.errors import BackendUnavailableError
from teswap.hardware.probe import Availability, probe_te, probe_te_fp8


@dataclass(frozen=True)
class Precision:
    name: str
    model_dtype: torch.dtype
    fp8_recipe: str | None  # name in teswap.precision.fp8.RECIPES / te_fp8.TE_RECIPES; None: no FP8


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32, None),
    "bf16": Precision("bf16", torch.bfloat16, None),
    "fp8-delayed": Precision("fp8-delayed", torch.bfloat16, "fp8-delayed"),
    "fp8-current": Precision("fp8-current", torch.bfloat16, "fp8-current"),
    "fp8-block": Precision("fp8-block", torch.bfloat16, "fp8-block"),
    "mxfp8": Precision("mxfp8", torch.bfloat16, "mxfp8"),
}


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}") from None


def precision_availability(name: str, backend: str, device: torch.device | str) -> Availability:
    """Whether `backend` can run precision `name` on `device`, with the reason when it cannot."""
    precision = get_precision(name)
    device = torch.device(device)
    if precision.fp8_recipe is None:
        if backend == "te":
            return probe_te()
        return Availability(True)
    if backend == "torch":
        reason = fp8.unsupported_reason(precision.fp8_recipe)
        return Availability(reason is None, reason or "")
    if backend == "te":
        from teswap.precision.te_glue import te_recipe_availability

        te = probe_te_fp8()
        return te if not te else te_recipe_availability(precision.fp8_recipe)
    return Availability(False, f"unknown backend {backend!r}")


def require_precision(name: str, backend: str, device: torch.device | str) -> Precision:
    """The Precision, or BackendUnavailableError with the reason it cannot run here."""
    availability = precision_availability(name, backend, device)
    if not availability:
        raise BackendUnavailableError(
            f"precision {name!r} on backend {backend!r} is unavailable: {availability.reason}"
        )
    return get_precision(name)


def swapped_autocast(name: str, backend: str) -> ContextManager[None]:
    """The context the swapped model runs in at precision `name` (a no-op without FP8)."""
    recipe = get_precision(name).fp8_recipe
    if recipe is None:
        return nullcontext()
    if backend == "te":
        from teswap.precision.te_glue import te_autocast

        return te_autocast(recipe)
    return fp8.fp8_autocast(fp8.RECIPES[recipe]())


def calibrate(model: torch.nn.Module, inputs: torch.Tensor, name: str,
              context: Callable[[], ContextManager[None]], *, steps: int = 2, backward: bool = False) -> None:
    """Warm-up steps at FP8 precision `name` inside `context()`, so DelayedScaling has scales; a no-op otherwise.

    TE (and our emulation) update forward scales at the exit of a grad-enabled autocast and gradient
    scales after a backward; judged on its first step a delayed-scaling model would quantize with the
    initial scale 1.0, which flushes small gradients to zero in E5M2. With `backward` each step also
    runs the causal-LM loss backward (its gradients set the E5M2 scales). Gradients are dropped after.
    """
    if get_precision(name).fp8_recipe is None:
        return
    with torch.enable_grad():
        for _ in range(steps):
            with context():
                output = model(inputs, labels=inputs) if backward else model(inputs)
            if backward:
                output.loss.backward()
    model.zero_grad(set_to_none=True)

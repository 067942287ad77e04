"""Running a model at a precision: whether a backend can here (with the reason), the context the swapped
model runs in, and the warm-up that gives DelayedScaling its scales.

fp32 and bf16 are model dtypes. The FP8 precisions keep bf16 weights and activations and run the
four GEMMs of every swapped layer in FP8 under a recipe, as TE does: through teswap.precision.emulation on the
`torch` backend, through `te.pytorch.autocast(recipe=...)` on the `te` backend. A precision a backend
or GPU cannot run is refused with the reason, never run at another precision.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import asdict
from enum import Enum
from typing import Any

import torch

from teswap.errors import BackendUnavailableError
from teswap.hardware.probe import Availability, probe_te
from teswap.precision.emulation import fp8_autocast
from teswap.precision.recipes import RECIPES, unsupported_reason
from teswap.precision.table import Precision, get_precision


def precision_availability(name: str, backend: str, device: torch.device | str) -> Availability:
    """Whether `backend` can run precision `name` on `device`, with the reason when it cannot."""
    precision = get_precision(name)
    device = torch.device(device)
    if precision.fp8_recipe is None:
        if backend == "te":
            return probe_te()
        return Availability(True)
    if backend == "torch":
        reason = unsupported_reason(name)
        return Availability(reason is None, reason or "")
    if backend == "te":
        from teswap.precision.te_glue import te_recipe_availability

        return te_recipe_availability(name)
    return Availability(False, f"unknown backend {backend!r}")


def require_precision(name: str, backend: str, device: torch.device | str) -> Precision:
    """The Precision, or BackendUnavailableError with the reason it cannot run here."""
    availability = precision_availability(name, backend, device)
    if not availability:
        raise BackendUnavailableError(
            f"precision {name!r} on backend {backend!r} is unavailable: {availability.reason}"
        )
    return get_precision(name)


# How the torch backend runs each block-scaled recipe: always emulated, so its time is no speed of the recipe.
BLOCK_EMULATION = ("emulated: blocks quantized and dequantized exactly as TE defines them, GEMMs in fp32 "
                   "(teswap.precision.blockwise); a time measured so is not a speed of {recipe}")


def emulated_timing_reason(name: str, backend: str) -> str | None:
    """Why a timing of precision `name` on `backend` would not be a speed of its recipe, or None."""
    recipe = get_precision(name).fp8_recipe
    if backend == "torch" and recipe in BLOCK_RECIPE_NAMES:
        return (f"precision {name!r} on the torch backend is " + BLOCK_EMULATION.format(recipe=recipe)
                + "; time it on the te backend")
    return None


BLOCK_RECIPE_NAMES = ("Float8BlockScaling", "MXFP8BlockScaling", "NVFP4BlockScaling")


def swapped_autocast(name: str, backend: str) -> ContextManager[None]:
    """The context the swapped model runs in at precision `name` (a no-op without FP8)."""
    if not get_precision(name).is_fp8:
        return nullcontext()
    if backend == "te":
        from teswap.precision.te_glue import te_autocast

        return te_autocast(name)
    return fp8_autocast(RECIPES[name]())


def calibrate(model: torch.nn.Module, inputs: torch.Tensor, name: str,
              context: Callable[[], ContextManager[None]], *, steps: int = 2, backward: bool = False) -> None:
    """Warm-up steps at FP8 precision `name` inside `context()`, so DelayedScaling has scales; a no-op otherwise.

    TE (and our emulation) update forward scales at the exit of a grad-enabled autocast and gradient
    scales after a backward; judged on its first step a delayed-scaling model would quantize with the
    initial scale 1.0, which flushes small gradients to zero in E5M2. With `backward` each step also
    runs the causal-LM loss backward (its gradients set the E5M2 scales). Gradients are dropped after.
    """
    if get_precision(name).fp8_recipe != "DelayedScaling":  # current and block scaling keep no history
        return
    with torch.enable_grad():
        for _ in range(steps):
            with context():
                output = model(inputs, labels=inputs) if backward else model(inputs)
            if backward:
                output.loss.backward()
    model.zero_grad(set_to_none=True)


def recipe_record(name: str, backend: str) -> dict[str, Any] | None:
    """The FP8 recipe a swapped model runs under at precision `name`, every field as the backend holds it
    (TE's own recipe object on `te`, teswap's emulated recipe on `torch`); None without FP8 or for stock."""
    precision = get_precision(name)
    if not precision.is_fp8 or backend == "stock":
        return None
    if backend == "te":
        from teswap.precision.te_glue import te_recipe_fields

        return {"name": name, **te_recipe_fields(name)}
    factory = RECIPES.get(name)
    if factory is None:  # block scalings: not emulated, so nothing of ours to record
        return {"name": name, "type": precision.fp8_recipe, "settings": "TransformerEngine defaults (te only)"}
    recipe = factory()
    settings = {key: value.name if isinstance(value, Enum) else value for key, value in asdict(recipe).items()}
    record = {"name": name, "type": type(recipe).__name__, **settings}
    if precision.fp8_recipe in BLOCK_RECIPE_NAMES:
        record["execution"] = BLOCK_EMULATION.format(recipe=precision.fp8_recipe)
    return record

"""Availability probes for optional hardware and libraries; every "no" carries a reason."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from teswap.errors import UnsupportedConfigError
from teswap.hardware import te_api


@dataclass(frozen=True)
class Availability:
    """Whether something can run here, and why not when it cannot."""

    available: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.available


def default_device() -> str:
    """Where teswap runs unless told otherwise: "cuda" when torch sees a CUDA device, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def probe_te() -> Availability:
    """Can the `te` backend run: transformer_engine.pytorch (TE >= 2.0) imports and a CUDA device is present."""
    try:
        # `import transformer_engine` swallows a failed PyTorch-extension import; import the submodule.
        import transformer_engine.pytorch  # noqa: F401
    except ModuleNotFoundError as err:
        return Availability(False, _missing_module_reason(err))
    except Exception as err:  # noqa: BLE001 - TE raises RuntimeError/OSError/ImportError variously
        return Availability(False, f"transformer_engine.pytorch failed to import: {type(err).__name__}: {err}")
    try:
        too_old = te_api.needs_version("teswap's te backend", te_api.MIN_TE_VERSION, te_api.imported_te_version())
    except UnsupportedConfigError as err:
        return Availability(False, str(err))
    if too_old:
        return Availability(False, too_old)
    if not torch.cuda.is_available():
        return Availability(False, "no CUDA device: TransformerEngine's layers run on NVIDIA GPUs only")
    return Availability(True)


def _missing_module_reason(err: ModuleNotFoundError) -> str:
    """TE (or part of it) missing, or a module TE imports (pydantic, einops, ...): name which."""
    missing = err.name or str(err)
    if missing.startswith("transformer_engine"):  # TE itself, or its torch extension transformer_engine_torch
        return f"{missing} is not installed (pip install --no-build-isolation 'teswap[te]')"
    return (f"transformer_engine.pytorch failed to import: the module {missing!r} it imports is not installed; "
            "install the package that provides it")


@functools.cache
def probe_te_recipe(recipe_class: str) -> Availability:
    """Can TE run FP8 recipe `recipe_class` here: the installed TE has it, and TE's own check for it passes."""
    te = probe_te()
    if not te:
        return te
    try:
        ok, reason = te_api.recipe_check(recipe_class)
    except UnsupportedConfigError as err:
        return Availability(False, str(err))
    return Availability(ok, reason)


def probe_te_fp8() -> Availability:
    """Can TE run per-tensor FP8 here (DelayedScaling: compute capability >= 8.9 with a recent enough CUDA)."""
    return probe_te_recipe("DelayedScaling")


def te_version() -> str | None:
    """transformer_engine's version string, or None when it is not installed (no import of its extension)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("transformer-engine", "transformer_engine", "transformer-engine-torch"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def clear_probe_caches() -> None:
    """Forget cached probe answers (tests that install a stand-in TE, or a TE installed mid-process)."""
    probe_te.cache_clear()
    probe_te_recipe.cache_clear()

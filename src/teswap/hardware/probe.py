"""Availability probes for optional hardware and libraries; every "no" carries a reason."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


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
    """Can the `te` backend run: transformer_engine.pytorch imports and a CUDA device is present."""
    try:
        # `import transformer_engine` swallows a failed PyTorch-extension import; import the submodule.
        import transformer_engine.pytorch  # noqa: F401
    except ModuleNotFoundError:
        return Availability(
            False, "transformer_engine is not installed (pip install --no-build-isolation 'teswap[te]')"
        )
    except Exception as err:  # noqa: BLE001 - TE raises RuntimeError/OSError/ImportError variously
        return Availability(False, f"transformer_engine.pytorch failed to import: {type(err).__name__}: {err}")
    if not torch.cuda.is_available():
        return Availability(False, "no CUDA device: TransformerEngine's layers run on NVIDIA GPUs only")
    return Availability(True)


@functools.cache
def probe_te_fp8() -> Availability:
    """Can TE run FP8 here (compute capability >= 8.9 with a recent enough CUDA)."""
    te = probe_te()
    if not te:
        return te
    from transformer_engine.pytorch import is_fp8_available

    ok, reason = is_fp8_available(return_reason=True)
    return Availability(bool(ok), "" if ok else f"TransformerEngine: {reason}")


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
    probe_te_fp8.cache_clear()

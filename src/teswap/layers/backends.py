"""Backends for the swapped decoder layer: a plain registry, name -> Backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from teswap.errors import BackendUnavailableError
from teswap.hardware.probe import Availability, probe_te


def _torch_available() -> Availability:
    return Availability(True)


def _torch_class(plan_source: Any, fuse_qkv: bool) -> type:
    from teswap.layers.torch_backend import torch_decoder_class

    return torch_decoder_class(plan_source, fuse_qkv=fuse_qkv)


def _te_class(plan_source: Any, fuse_qkv: bool) -> type:
    from teswap.layers.te_backend import te_decoder_class

    return te_decoder_class(plan_source, fuse_qkv=fuse_qkv)


@dataclass(frozen=True, kw_only=True)
class Backend:
    """How to get a backend's decoder-layer class, and whether it can run here."""

    name: str
    description: str
    probe: Callable[[], Availability]
    decoder_class: Callable[[Any, bool], type]  # (a family's plan source, fuse_qkv) -> class

    def require(self) -> None:
        """Raise BackendUnavailableError with the probe's reason when this backend cannot run."""
        availability = self.probe()
        if not availability:
            raise BackendUnavailableError(f"backend {self.name!r} is unavailable: {availability.reason}")


BACKENDS: dict[str, Backend] = {
    "torch": Backend(
        name="torch",
        description="pure-PyTorch TE-layout layer (TE's math and FP8 recipes; CPU and any GPU)",
        probe=_torch_available,
        decoder_class=_torch_class,
    ),
    "te": Backend(
        name="te",
        description="transformer_engine.pytorch.TransformerLayer (NVIDIA GPU with TE installed)",
        probe=probe_te,
        decoder_class=_te_class,
    ),
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}") from None

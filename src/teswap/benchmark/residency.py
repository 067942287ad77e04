"""Where models are while they are measured: pairs live in host memory and visit the device.

A lone cell has its model resident. A paired cell has both models resident when they fit together
(`fits_together`), so rounds switch models without moving anything; otherwise they take turns: each
block moves its model onto the device and off again afterwards, with its optimizer state dropped (the
next block's untimed first step rebuilds it). After the rounds the baseline leaves, so the measured
model's peak memory and energy are its own. On a CPU device nothing moves.

Moving a `torch`-backend swapped model with `.to()` turns its q/k/v parameters (views of one fused
QKV buffer) into separate tensors, and the old fused buffer, a plain attribute `.to()` does not
move, stays where it was until the next forward re-fuses. `settle` re-fuses right after every move,
so the stale buffer is freed at once (nothing of the model stays behind on the device) and the
re-fuse copy happens outside any measured cell.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from teswap.benchmark.workloads import WorkloadStep, drop_state
from teswap.swap.pair import Pair

HOST = torch.device("cpu")
M = TypeVar("M", bound=torch.nn.Module)


def settle(model: torch.nn.Module) -> None:
    """Re-fuse split-QKV weights where they now live (a no-op for stock and TE models)."""
    with torch.no_grad():
        for module in model.modules():
            fuse = getattr(module, "gemm_weight", None)
            if callable(fuse) and getattr(module, "split_names", None):
                fuse()


def move(model: M, device: torch.device) -> M:
    """`model` on `device`, its fused weights settled, and freed device memory returned."""
    model.to(device)
    settle(model)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return model


@contextmanager
def resident(model: M, device: torch.device) -> Iterator[M]:
    """`model` on `device` for the block and back on the host afterwards (no moves when device is the host)."""
    if device.type == "cpu":
        yield model
        return
    try:
        yield move(model, device)
    finally:
        move(model, HOST)


def offload(pair: Pair) -> None:
    """Put both models of a pair built on a device into host memory."""
    for model in (pair.stock, pair.swapped):
        move(model, HOST)


# Both models of a paired cell stay on the device when twice the stock cell's peak fits in this share.
FIT_FRACTION = 0.9


def fits_together(device: torch.device, stock_peak_bytes: int | None) -> bool:
    """Whether the stock and the swapped model of a cell can both stay on `device` while it is timed.

    Twice the stock cell's measured peak (weights, optimizer state and one step's activations) must
    fit in FIT_FRACTION of the device's memory; an unknown peak does not fit. A CPU always fits.
    """
    if device.type == "cpu":
        return True
    if stock_peak_bytes is None:
        return False
    return 2 * stock_peak_bytes <= FIT_FRACTION * torch.cuda.get_device_properties(device).total_memory


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Hooks:
    """What runs before and after a model's turn (preparing it, or one block of its steps)."""

    enter: Callable[[], None] = _nothing
    leave: Callable[[], None] = _nothing


@dataclass(frozen=True, kw_only=True)
class Placement:
    """How a measurement's models are placed: "resident" (already on the device, staying) or
    "alternating" (in host memory, moved on for each turn); `baseline` marks the baseline side's."""

    name: str
    device: torch.device
    baseline: bool = False

    @classmethod
    def resident(cls, device: torch.device) -> Placement:
        return cls(name="resident", device=device)

    @classmethod
    def alternating(cls, device: torch.device) -> Placement:
        return cls(name="alternating", device=device)

    def as_baseline(self) -> Placement:
        return replace(self, baseline=True)

    @property
    def moves(self) -> bool:
        return self.device.type != "cpu"

    def hooks(self, model: torch.nn.Module) -> Hooks:
        """Around preparing a step: an alternating model comes onto the device and leaves again."""
        if self.name == "alternating" and self.moves:
            return Hooks(enter=lambda: _on(model, self.device), leave=lambda: _on(model, HOST))
        return Hooks()


def _on(model: torch.nn.Module, device: torch.device) -> None:
    move(model, device)


def hooks_for(placement: Placement, model: torch.nn.Module, step: WorkloadStep) -> dict[str, Callable[[], None]]:
    """A side's enter/leave (around each block) and dismiss (after the rounds) under `placement`."""
    def off() -> None:
        drop_state(step)
        move(model, HOST)

    if not placement.moves:
        return {}
    if placement.name == "alternating":
        return {"enter": lambda: _on(model, placement.device), "leave": off}
    return {"dismiss": off} if placement.baseline else {}

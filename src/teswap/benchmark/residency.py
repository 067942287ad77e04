"""One model resident on the device at a time: pairs live in host memory, the measured model visits.

Moving a `torch`-backend swapped model with `.to()` turns its q/k/v parameters (views of one fused
QKV buffer) into separate tensors, and the old fused buffer, a plain attribute `.to()` does not
move, stays where it was until the next forward re-fuses. `settle` re-fuses right after every move,
so the stale buffer is freed at once (nothing of the model stays behind on the device) and the
re-fuse copy happens outside any measured cell.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

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

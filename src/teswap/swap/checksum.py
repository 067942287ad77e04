"""Exact, position-sensitive tensor checksums computed where the tensor lives (no host copy)."""

from __future__ import annotations

import torch

_CHUNK = 1 << 22  # elements per step: bounds the int64 temporaries on a GPU
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def tensor_checksum(tensor: torch.Tensor) -> str:
    """dtype, shape and a 64-bit weighted sum of the raw bits; equal iff bitwise equal (w.h.p.)."""
    flat = tensor.detach().contiguous().reshape(-1)
    bits = flat.view(_INT_VIEW[flat.element_size()])
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, bits.numel(), _CHUNK):
        chunk = bits[start : start + _CHUNK].to(torch.int64)
        # Weights 1..2^31-1 from the position make the sum sensitive to order, not just to values.
        weights = (torch.arange(start, start + chunk.numel(), device=flat.device, dtype=torch.int64)
                   * 2654435761 % 2147483647) + 1
        total += (chunk * weights).sum()
    shape = "x".join(map(str, tensor.shape))
    return f"{str(tensor.dtype).removeprefix('torch.')}[{shape}]:{int(total) & 0xFFFFFFFFFFFFFFFF:016x}"

"""Peak memory of one cell, with the method recorded next to every number.

GPU: torch's caching-allocator peaks (`max_memory_allocated` / `max_memory_reserved`), reset when the
cell starts, so they cover weights, warm-up, the timed steps, gradients and optimizer state.

CPU: torch keeps no allocator statistics for CPU tensors, and the process's RSS is dominated by the
interpreter and libraries and never shrinks after a free. So after the timed loop one more (untimed)
step runs under a TorchDispatchMode that adds up the bytes of every live tensor storage: the
resident weights, buffers, optimizer state and inputs, plus each op's outputs until they are freed.
It sees what autograd saves and what the optimizer creates, not workspaces private to a kernel.
The process's peak RSS (VmHWM, reset per cell through /proc/self/clear_refs) is recorded beside it.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CUDA_METHOD = "cuda_caching_allocator_peak(reset_at_cell_start)"
CPU_METHOD = "cpu_live_tensor_storage_peak(torch_dispatch_mode,one_untimed_step)"
RSS_METHOD = "process_vmhwm(reset_via_/proc/self/clear_refs_at_cell_start)"


@dataclass(frozen=True, kw_only=True)
class MemoryResult:
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    peak_memory_method: str | None = None
    peak_memory_null_reason: str | None = None
    peak_rss_bytes: int | None = None
    peak_rss_method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LiveTensorBytes(TorchDispatchMode):
    """Running total and peak of live CPU tensor-storage bytes (each storage counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # storage data_ptr -> nbytes
        self.current_bytes = 0
        self.peak_bytes = 0

    def track(self, tensor: object) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or tensor.is_meta:
            return
        try:
            storage = tensor.untyped_storage()
            pointer, nbytes = storage.data_ptr(), storage.nbytes()
        except RuntimeError:  # a wrapper subclass (DTensor) has no storage of its own: its local shard is counted
            return
        if nbytes == 0 or pointer in self.live:
            return
        self.live[pointer] = nbytes
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        # torch keeps a storage's Python object alive as long as the storage, so this fires on its free.
        weakref.finalize(storage, self._release, pointer)

    def _release(self, pointer: int) -> None:
        self.current_bytes -= self.live.pop(pointer, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            self.track(leaf)
        return out


def cpu_step_peak_bytes(step: Callable[[], object], resident: Iterable[torch.Tensor]) -> int:
    """Peak live CPU tensor bytes over one call of `step`, counting `resident` tensors as live."""
    tracker = LiveTensorBytes()
    for tensor in resident:
        tracker.track(tensor)
    with tracker:
        step()
    return tracker.peak_bytes


def _vm_hwm_bytes() -> int | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def reset_peak_rss() -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class MemoryTracker:
    """Peak memory of one cell: `start()` at cell start, `after_timing(...)` after the loop, then `result()`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = False
        self._rss_reset = False
        self._cpu_peak: int | None = None

    def start(self) -> None:
        self.started = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # what the previous cell cached must not count as reserved here
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss_reset = reset_peak_rss()

    def after_timing(self, step: Callable[[], object], resident: Callable[[], Iterable[torch.Tensor]]) -> None:
        """On CPU, run one untimed step under the live-tensor tracker (the GPU peak is already known)."""
        if self.device.type == "cpu":
            self._cpu_peak = cpu_step_peak_bytes(step, resident())

    def result(self) -> MemoryResult:
        if not self.started:
            return MemoryResult(peak_memory_null_reason="the cell stopped before its memory measurement started")
        if self.device.type == "cuda":
            return MemoryResult(peak_allocated_bytes=torch.cuda.max_memory_allocated(self.device),
                                peak_reserved_bytes=torch.cuda.max_memory_reserved(self.device),
                                peak_memory_method=CUDA_METHOD)
        if self.device.type != "cpu":
            return MemoryResult(peak_memory_null_reason=f"no peak-memory method for {self.device.type} devices")
        rss = _vm_hwm_bytes() if self._rss_reset else None
        return MemoryResult(
            peak_allocated_bytes=self._cpu_peak, peak_memory_method=CPU_METHOD if self._cpu_peak is not None else None,
            peak_memory_null_reason=("CPU tensors have no allocator reserve, so no reserved figure"
                                     if self._cpu_peak is not None else "the cell stopped before the memory step"),
            peak_rss_bytes=rss, peak_rss_method=RSS_METHOD if rss is not None else None,
        )

"""How much memory a new allocation can still get: RAM on the host, VRAM on a GPU, with how it was read.

CPU: the kernel's MemAvailable (free plus reclaimable page cache), capped by the cgroup's limit where the
process runs in one (cgroup v2 memory.max - memory.current), since the OOM killer enforces the smaller.
GPU: `torch.cuda.mem_get_info`, the driver's free bytes on the device (other processes included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class FreeMemory:
    """Free bytes on a device (None: unknown here) and how they were read."""

    bytes: int | None
    method: str


def free_memory(device: torch.device) -> FreeMemory:
    """What a new allocation on `device` can get now."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return FreeMemory(int(free), "torch.cuda.mem_get_info")
    available = _meminfo_available()
    limit = _cgroup_room()
    if available is None:
        return FreeMemory(limit, "cgroup memory.max - memory.current" if limit is not None else "unknown")
    if limit is not None and limit < available:
        return FreeMemory(limit, "cgroup memory.max - memory.current")
    return FreeMemory(available, "/proc/meminfo MemAvailable")


def _meminfo_available() -> int | None:
    try:
        match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", MEMINFO.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _cgroup_room() -> int | None:
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        current = int((CGROUP / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)

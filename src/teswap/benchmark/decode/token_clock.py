"""When each output token exists, on the device's own clock: CUDA events on a GPU, a host clock on a CPU.

A decode step calls `start()` before the prefill and `mark()` once a token has been chosen (after its
argmax is queued). On CUDA every mark records an event on the current stream and nothing waits, so
the host keeps queueing the next token as it would in a real generation; `read()` waits for the last
event and returns each mark's seconds since the start, measured between GPU timestamps (host-bound
gaps, where the GPU waits for the next launch, count: they are part of the latency). On a CPU an op
has finished when it returns, so marks read a host clock (`time.perf_counter`, or a synthetic clock
in tests).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch


class TokenClock(ABC):
    """Marks inside one step; `read()` gives the seconds from `start()` to each mark, in order."""

    name: str

    @abstractmethod
    def start(self) -> None:
        """Begin a step (forgets the previous step's marks)."""

    @abstractmethod
    def mark(self) -> None:
        """A token exists now."""

    @abstractmethod
    def read(self) -> list[float]:
        """Seconds from the start to each mark (waits for the device where it must)."""


class HostTokenClock(TokenClock):
    """A host clock read at every mark; right on a CPU, where returned ops have run."""

    name = "perf_counter"

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._start_s = 0.0
        self._marks_s: list[float] = []

    def start(self) -> None:
        self._marks_s = []
        self._start_s = self.clock()

    def mark(self) -> None:
        self._marks_s.append(self.clock())

    def read(self) -> list[float]:
        return [mark - self._start_s for mark in self._marks_s]


class CudaEventTokenClock(TokenClock):
    """An event recorded on the current stream per mark; events are pooled and reused across steps."""

    name = "cuda_events"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: list[torch.cuda.Event] = []
        self._used = 0

    def _record(self) -> None:
        if self._used == len(self._pool):
            self._pool.append(torch.cuda.Event(enable_timing=True))
        with torch.cuda.device(self.device):
            self._pool[self._used].record()
        self._used += 1

    def start(self) -> None:
        self._used = 0
        self._record()

    def mark(self) -> None:
        self._record()

    def read(self) -> list[float]:
        events = self._pool[: self._used]
        events[-1].synchronize()
        return [events[0].elapsed_time(event) / 1e3 for event in events[1:]]  # elapsed_time is in ms

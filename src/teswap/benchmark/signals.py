"""SIGTERM (and SIGINT) as a clean stop: KeyboardInterrupt in the main thread, never mid-record.

A batch scheduler's SIGTERM would otherwise kill the process where it stands; turned into
KeyboardInterrupt it unwinds through the `finally` blocks (sampler threads stopped, models released)
and the sweep reports what it finished. Inside `guard.deferred()` (a record being written) the
interrupt waits until the block ends, so a signal never tears a record.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    """Installed handlers raise KeyboardInterrupt, or hold it while a deferred block runs."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None  # the signal that arrived during a deferred block

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold signals until the block finishes, then raise the one that arrived, if any."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.depth == 0 and self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@contextmanager
def terminate_as_interrupt() -> Iterator[InterruptGuard]:
    """Install the guard's handlers for SIGINT and SIGTERM; restore the previous ones on exit.

    Signal handlers can only be set from the main thread; elsewhere the guard is inert (deferred()
    still works, nothing is installed).
    """
    guard = InterruptGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    try:
        for signum in HANDLED:
            signal.signal(signum, guard.handle)
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

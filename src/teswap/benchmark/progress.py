"""How a sweep reports its progress: a protocol, a silent default, and a progress bar on stderr."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from teswap.benchmark.plan import Cell


class Progress(Protocol):
    """What run_sweep tells as it goes: the total, each finished cell, warnings (a noisy cell), the end."""

    def start(self, total: int, already_done: int) -> None: ...
    def advance(self, cell: Cell, status: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """Progress that shows nothing."""

    def start(self, total: int, already_done: int) -> None:
        pass

    def advance(self, cell: Cell, status: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """A progress bar over the sweep's cells, on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, total: int, already_done: int) -> None:
        from tqdm.auto import tqdm  # a transformers dependency

        self.bar = tqdm(total=total, initial=already_done, desc="teswap bench", unit="cell", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)

    def advance(self, cell: Cell, status: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cell.label()}: {status}", refresh=False)
            self.bar.update(1)

    def warn(self, message: str) -> None:
        """A warning line above the bar, as it happens."""
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""What ranks agree on: a barrier before each timed block, the slowest rank's times, one decision for all.

A `RankSync` wraps the launch's default process group (every rank of the launch); `RankSync(None)`,
or one over `Parallel.single()`, is the one-process case where every call returns its input. Each
call is one torch.distributed collective (all_gather_object or barrier), so every rank must make the
same calls in the same order: the benchmark calls them at the same points of the same cell plan.

A collective that fails because a peer left (its process died, torchrun is tearing the launch down)
raises `PeerLost`; the caller stops without writing a record for the cell it was in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from teswap.distributed.launch import Parallel
from teswap.errors import TeswapError

T = TypeVar("T")
FAILURE_KEY = "teswap/failure"  # the launch store key a failing rank leaves its one line under


class PeerLost(TeswapError):
    """A collective failed: another rank of the launch stopped (its own line says why)."""


class RankFailure(TeswapError):
    """This rank failed a cell of a multi-process launch; the launch stops (finished cells are kept)."""


def _is_distributed_error(err: BaseException) -> bool:
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None),) if k is not None)
    text = str(err)
    return isinstance(err, kinds) or any(mark in text for mark in ("Connection closed by peer", "Connection reset",
                                                                 "Socket Timeout", "gloo", "NCCL"))


class RankSync:
    """Cross-rank agreement over the launch's process group; inert for one process."""

    def __init__(self, parallel: Parallel | None) -> None:
        self.parallel = parallel if parallel is not None else Parallel.single()

    @property
    def active(self) -> bool:
        return self.parallel.distributed and self.parallel.world_size > 1

    @property
    def rank(self) -> int:
        return self.parallel.rank

    def _collective(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as err:
            if _is_distributed_error(err):
                raise PeerLost(f"rank {self.rank}: a collective failed ({type(err).__name__}); "
                               "another rank left the launch") from None
            raise

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order (the value alone for one process)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.parallel.world_size

        def call() -> list[T]:
            dist.all_gather_object(out, value)
            return out

        return self._collective(call)

    def barrier(self) -> None:
        """Wait until every rank is here (before a timed block)."""
        if self.active:
            import torch.distributed as dist

            self._collective(dist.barrier)

    def slowest(self, times: list[float]) -> tuple[list[float], list[list[float]]]:
        """Each position's largest time over the ranks, and every rank's own list (rank order)."""
        every = self.gather([float(t) for t in times])
        if len({len(t) for t in every}) != 1:
            raise RankFailure(f"ranks timed different numbers of steps: {[len(t) for t in every]}")
        return [max(column) for column in zip(*every, strict=True)], every

    def max(self, value: float) -> float:
        return max(self.gather(float(value)))

    def all(self, flag: bool) -> bool:
        return all(self.gather(bool(flag)))

    def any(self, flag: bool) -> bool:
        return any(self.gather(bool(flag)))

    def first_reason(self, reason: str | None) -> str | None:
        """The lowest rank's non-empty reason (prefixed with its rank), or None when no rank has one."""
        for rank, found in enumerate(self.gather(reason)):
            if found:
                return found if not self.active else f"rank {rank}: {found}"
        return None

    def publish_failure(self, line: str) -> None:
        """Leave this rank's failure line in the launch's store, so peers stopped by it stay silent."""
        store = _launch_store()
        if store is not None:
            with contextlib.suppress(Exception):  # the line is printed anyway; the store is a courtesy to peers
                store.set(FAILURE_KEY, line)

    def peer_failure(self) -> str | None:
        """The failure line another rank published, if any (None when none did or no store is reachable)."""
        store = _launch_store()
        if store is None:
            return None
        try:
            if store.check([FAILURE_KEY]):
                return store.get(FAILURE_KEY).decode()
        except Exception:  # noqa: BLE001 - a store that is gone means no line to read
            return None
        return None


def _launch_store() -> Any:
    """The key-value store the default process group was rendezvoused through (None outside a launch)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    getter = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return getter() if getter is not None else None
    except Exception:  # noqa: BLE001 - private API: absent or changed means no store to use
        return None

"""How a multi-process launch ends when a rank fails: one line naming the rank and cause, no hang.

A rank whose cell fails (an exception, an OOM) writes that cell's record, leaves its line in the
launch's store, prints it and exits 1; torchrun then stops the other ranks (SIGTERM), and any rank
blocked in a collective with the dead one gets an error from the process group at once (gloo sees the
closed connection; NCCL's watchdog within the group's timeout). Those ranks find the failing rank's
line in the store and exit 1 without a line of their own, so the launch says one thing. Finished cells
are in every rank's file; rerunning the same command resumes at the first unfinished cell.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from teswap.distributed.launch import Parallel
from teswap.distributed.sync import PeerLost, RankFailure, RankSync


@contextmanager
def launch_faults(parallel: Parallel) -> Iterator[RankSync]:
    """Turn this rank's failure into its one line (exit 1), and a peer's into a silent exit 1."""
    sync = RankSync(parallel)
    try:
        yield sync
    except RankFailure as err:
        line = f"teswap: error: {err}"
        if sync.peer_failure() is None:  # the first rank to fail speaks for the launch
            sync.publish_failure(line)
            print(line, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except PeerLost as err:
        if sync.peer_failure() is None:
            print(f"teswap: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def stopped_by_peer(parallel: Parallel) -> bool:
    """Whether another rank of this launch published a failure (this rank's interrupt is its echo)."""
    return RankSync(parallel).active and RankSync(parallel).peer_failure() is not None


@contextmanager
def rank_zero_output(parallel: Parallel) -> Iterator[None]:
    """Only rank 0 prints tables and progress (stdout); every rank keeps stderr for its own errors."""
    if parallel.rank == 0:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield

"""`teswap` with one rank made to fail mid-cell, for the launch-fault test (tests/test_torchrun.py).

torchrun runs this file in place of `-m teswap.cli`: on the rank named by TESWAP_TEST_FAILING_RANK, preparing the
first swapped cell raises, as an exception in a user's cell would; every other rank runs teswap unchanged.
"""

from __future__ import annotations

import os
import sys

from teswap.benchmark import runner
from teswap.cli import main


def _install_fault() -> None:
    original = runner._prepared_side

    def failing(cell, *args, **kwargs):
        if cell.backend != "stock":
            raise RuntimeError("injected failure in a swapped cell")
        return original(cell, *args, **kwargs)

    runner._prepared_side = failing


if __name__ == "__main__":
    if os.environ.get("RANK") == os.environ.get("TESWAP_TEST_FAILING_RANK"):
        _install_fault()
    sys.exit(main(sys.argv[1:]))

"""The correctness suite's results store: every case appends a parity record with provenance.

Records go to --results-dir (or $TESWAP_RESULTS); by default to a temporary store for the session,
so a plain `pytest` run does not add files to the repository's results/ (nox's `correctness`
session passes --results-dir results).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--results-dir", default=os.environ.get("TESWAP_RESULTS"),
                     help="results store the correctness suite appends parity records to")


@pytest.fixture(scope="session")
def results_writer(request, tmp_path_factory):
    from teswap.store.provenance import capture_provenance
    from teswap.store.runs import open_run

    root = request.config.getoption("--results-dir") or tmp_path_factory.mktemp("results")
    return open_run(Path(root), capture_provenance())

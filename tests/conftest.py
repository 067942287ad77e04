"""pytest wiring for the unit tests: fresh probes per test (markers are handled in the root conftest)."""

from __future__ import annotations

import pytest

from teswap.hardware.probe import clear_probe_caches


@pytest.fixture(autouse=True)
def _fresh_probes():
    """Each test sees probes computed in its own setting (a test may install a stand-in TE)."""
    clear_probe_caches()
    yield
    clear_probe_caches()

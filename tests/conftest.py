"""pytest wiring: fresh probes per test, TE/GPU markers that skip with the probe's reason."""

from __future__ import annotations

import pytest
import torch

from teswap.probe import clear_probe_caches, probe_te


@pytest.fixture(autouse=True)
def _fresh_probes():
    """Each test sees probes computed in its own setting (a test may install a stand-in TE)."""
    clear_probe_caches()
    yield
    clear_probe_caches()


def pytest_collection_modifyitems(config, items):
    """TE-marked tests skip with the probe's own reason where TE cannot run."""
    te = None
    for item in items:
        if item.get_closest_marker("te"):
            te = te if te is not None else probe_te()
            if not te:
                item.add_marker(pytest.mark.skip(reason=f"te backend unavailable: {te.reason}"))
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))

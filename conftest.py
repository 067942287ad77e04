"""Repository-wide pytest wiring: TE/GPU markers skip with the probe's own reason."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """`te` tests need real TransformerEngine on a GPU; `gpu` tests need CUDA. Elsewhere they skip, saying why."""
    from teswap.hardware.probe import probe_te

    te = None
    for item in items:
        if item.get_closest_marker("te"):
            te = te if te is not None else probe_te()
            if not te:
                item.add_marker(pytest.mark.skip(reason=f"te backend unavailable: {te.reason}"))
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))

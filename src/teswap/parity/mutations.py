"""Deliberate faults in the swap, to prove the parity check catches them (`teswap check --mutate NAME`).

Each mutation is a scoped patch (restored on exit) of one thing a real swap could get wrong:

    gate-up-swapped   fc1's halves exchanged: SiLU applied to up_proj instead of gate_proj
    layer-at-init     one decoder layer keeps its fresh initialisation instead of the stock weights
    rope-base-10000   RoPE from TE's default base 10000, ignoring the model's rope_theta and scaling
    fp8-skipped       the swapped model runs its GEMMs in bf16 while claiming an FP8 recipe

A parity run under any of them must end with a swap FAIL (exit 1) at every precision it applies to;
tests/test_mutations.py and scripts/calibrate_policies.py check that on the real model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from teswap.errors import TeswapError


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def gate_up_swapped() -> Any:
    from teswap.swap import mapping

    return _patched(mapping, "_GATE_UP", tuple(reversed(mapping._GATE_UP)))


def layer_at_init(layer: int = 1) -> Any:
    from teswap.swap import pair

    original = pair._copy_weights

    def copy_then_reinitialise(stock, swapped, **kwargs):
        original(stock, swapped, **kwargs)
        with torch.no_grad():
            for parameter in swapped.model.layers[layer].parameters():
                if parameter.dim() > 1:  # the GEMM weights; norms keep their ones
                    parameter.normal_(0.0, swapped.config.initializer_range)

    return _patched(pair, "_copy_weights", copy_then_reinitialise)


def rope_base_10000() -> Any:
    from teswap.layers.rope import RopeTable

    original = RopeTable.freqs

    def te_default_base(self, position_ids, seq_len, device):
        freqs = original(self, position_ids, seq_len, device)
        head_dim = freqs.shape[-1]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
        return torch.cat((angles, angles), dim=-1).reshape(seq_len, 1, 1, -1)

    return _patched(RopeTable, "freqs", te_default_base)


def fp8_skipped() -> Any:
    from teswap.parity import case

    return _patched(case, "swapped_autocast", lambda name, backend: nullcontext())


MUTATIONS: dict[str, Callable[[], Any]] = {
    "gate-up-swapped": gate_up_swapped,
    "layer-at-init": layer_at_init,
    "rope-base-10000": rope_base_10000,
    "fp8-skipped": fp8_skipped,
}


def mutation(name: str) -> Any:
    """The context manager of mutation `name`."""
    try:
        return MUTATIONS[name]()
    except KeyError:
        raise TeswapError(f"unknown mutation {name!r}; choose one of: {', '.join(MUTATIONS)}") from None

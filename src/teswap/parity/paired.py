"""Paired block bootstrap: is the swapped model's error, measured on the same inputs as stock's, beyond a bound?

Both models see the same text, so their per-position errors are paired. Neighbouring positions of one
sequence are correlated, so the resampling unit is a block of consecutive positions (a moving-block
bootstrap with fixed blocks): blocks are drawn with replacement, the SAME blocks for both models, and
each draw recomputes the metric for both. A bound is violated when even the lower end of the 95%
interval of (swapped − limit(stock)) is above zero: the data rule out a swap within the bound. A
single draw of a few hundred tokens cannot do that for a swap that merely equals stock, so
`never fail a swap that equals stock` holds by construction, while a real fault moves the whole
interval far past the bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BLOCK_TOKENS = 16  # positions per resampling block (about a sentence)
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True, kw_only=True)
class PairedSamples:
    """Per-unit numerators of one metric for both models, a shared denominator, and each unit's block.

    The metric is finish(Σ num / Σ den) over the units drawn (den = 1 per unit for a mean).
    """

    swapped: torch.Tensor  # [units]
    stock: torch.Tensor  # [units]
    blocks: torch.Tensor  # [units] int block id, 0..n_blocks-1
    denominator: torch.Tensor | None = None  # [units]; None: ones
    finish: Callable[[torch.Tensor], torch.Tensor] = lambda x: x

    def __post_init__(self) -> None:
        n = self.swapped.numel()
        if self.stock.numel() != n or self.blocks.numel() != n or n == 0:
            raise ValueError(f"paired samples need equal, non-empty lengths; got {n}, {self.stock.numel()}, "
                             f"{self.blocks.numel()}")

    def values(self) -> tuple[float, float]:
        """The metric over all units, for swapped and stock."""
        den = self._den().sum()
        return (float(self.finish(self.swapped.double().sum() / den)),
                float(self.finish(self.stock.double().sum() / den)))

    def resampled(self, resamples: int = RESAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The metric for swapped and stock over `resamples` bootstrap draws of blocks ([resamples] each)."""
        n_blocks = int(self.blocks.max()) + 1
        sums = {name: torch.zeros(n_blocks, dtype=torch.float64).index_add_(0, self.blocks, values.double())
                for name, values in (("swapped", self.swapped), ("stock", self.stock), ("den", self._den()))}
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randint(0, n_blocks, (resamples, n_blocks), generator=generator)
        den = sums["den"][draws].sum(-1)
        return (self.finish(sums["swapped"][draws].sum(-1) / den), self.finish(sums["stock"][draws].sum(-1) / den))

    def _den(self) -> torch.Tensor:
        return torch.ones_like(self.swapped, dtype=torch.float64) if self.denominator is None \
            else self.denominator.double()


def position_blocks(batch: int, positions: int, block: int = BLOCK_TOKENS, offset: int = 0) -> torch.Tensor:
    """Block ids for [batch, positions] flattened row-major: consecutive `block` positions of one row share one."""
    per_row = -(-positions // block)
    ids = torch.arange(positions) // block
    return (ids[None, :] + per_row * torch.arange(batch)[:, None]).reshape(-1) + offset


def interval(values: torch.Tensor, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap `values` (percentile method)."""
    tail = (1 - confidence) / 2
    low, high = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)

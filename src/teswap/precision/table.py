"""The one table of precisions: the names the CLI spells, the model dtype each runs at, its FP8 recipe.

Everything else that needs a precision's facts (the torch emulation, TE's recipes, policies, FLOP
peaks, the stock baseline a table compares against) reads them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from teswap.errors import BackendUnavailableError

# The name of a model dtype as a precision: the precision stock runs at as a baseline.
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Precision:
    """One precision: model dtype, and for FP8 the TE recipe class and its default recipe.Format."""

    name: str
    model_dtype: torch.dtype
    fp8_recipe: str | None = None  # class in transformer_engine.common.recipe; None: no FP8
    fp8_format: str | None = None  # the recipe's default Format: HYBRID (E4M3 fwd, E5M2 grads) or E4M3

    @property
    def is_fp8(self) -> bool:
        return self.fp8_recipe is not None

    @property
    def baseline(self) -> str:
        """The precision stock runs at for comparison: the model dtype's (bf16 for every FP8 recipe)."""
        return DTYPE_NAMES[self.model_dtype]


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32", torch.float32),
    "bf16": Precision("bf16", torch.bfloat16),
    "fp8-delayed": Precision("fp8-delayed", torch.bfloat16, "DelayedScaling", "HYBRID"),
    "fp8-current": Precision("fp8-current", torch.bfloat16, "Float8CurrentScaling", "HYBRID"),
    "fp8-block": Precision("fp8-block", torch.bfloat16, "Float8BlockScaling", "E4M3"),
    "mxfp8": Precision("mxfp8", torch.bfloat16, "MXFP8BlockScaling", "E4M3"),
    # FP4 values with E4M3 block scales; fp8_format is the scales' format, as TE's recipe holds it.
    "nvfp4": Precision("nvfp4", torch.bfloat16, "NVFP4BlockScaling", "E4M3"),
}


def get_precision(name: str) -> Precision:
    """The precision called `name`, or an error listing the known ones."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}") from None


def baseline_precision(name: str) -> str:
    """The stock precision a swapped run at `name` is compared with; an unknown name is its own baseline."""
    precision = PRECISIONS.get(name)
    return name if precision is None else precision.baseline

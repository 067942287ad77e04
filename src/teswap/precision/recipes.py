"""TE's recipes as teswap's own frozen dataclasses: formats, per-tensor and block-scaled recipes.

Field names and defaults are TE's (transformer_engine.common.recipe), so one settings object drives
both the torch emulation (teswap.precision.emulation) and TE itself (teswap.precision.te_glue).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import torch

from teswap.precision.table import PRECISIONS

AMAX_COMPUTE_ALGOS = ("max", "most_recent")


def fp8_max(fp8_dtype: torch.dtype) -> float:
    """Largest finite value of an FP8 dtype: 448 for E4M3, 57344 for E5M2."""
    return float(torch.finfo(fp8_dtype).max)



@dataclass(frozen=True)
class FormatSpec:
    """The FP8 dtypes a format uses for forward tensors (input, weight) and for gradients."""

    forward: torch.dtype
    backward: torch.dtype


class Format(Enum):
    """TE's `recipe.Format`: E4M3 (max 448), E5M2 (max 57344), HYBRID (E4M3 forward, E5M2 backward)."""

    E4M3 = FormatSpec(torch.float8_e4m3fn, torch.float8_e4m3fn)
    E5M2 = FormatSpec(torch.float8_e5m2, torch.float8_e5m2)
    HYBRID = FormatSpec(torch.float8_e4m3fn, torch.float8_e5m2)

    @property
    def max_fwd(self) -> float:
        """Largest finite value of the forward dtype."""
        return fp8_max(self.value.forward)

    @property
    def max_bwd(self) -> float:
        """Largest finite value of the gradient dtype."""
        return fp8_max(self.value.backward)


def _check_format(fp8_format: object, recipe: str) -> None:
    if not isinstance(fp8_format, Format):
        raise TypeError(f"{recipe}.fp8_format must be a teswap.precision.recipes.Format, got {fp8_format!r}")
    if fp8_format is Format.E5M2:
        # E5M2's 2 mantissa bits are too coarse for weights and activations; TE asserts the same.
        raise ValueError(f"{recipe}: pure E5M2 training is not supported; use Format.HYBRID or Format.E4M3")


@dataclass(frozen=True, kw_only=True)
class DelayedScaling:
    """TE's DelayedScaling: scales from the amax history of previous steps (names and defaults as TE)."""

    margin: int = 0
    fp8_format: Format = Format.HYBRID
    amax_history_len: int = 1024
    amax_compute_algo: Literal["max", "most_recent"] = "max"

    def __post_init__(self) -> None:
        _check_format(self.fp8_format, "DelayedScaling")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"DelayedScaling.margin must be an int >= 0, got {self.margin!r}")
        length = self.amax_history_len
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"DelayedScaling.amax_history_len must be an int >= 1, got {length!r}")
        if self.amax_compute_algo not in AMAX_COMPUTE_ALGOS:
            raise ValueError(f"DelayedScaling.amax_compute_algo must be one of {AMAX_COMPUTE_ALGOS}, "
                             f"got {self.amax_compute_algo!r} (callables are not emulated)")


def _power_2_scales_default() -> bool:
    # TE's default (transformer_engine/common/recipe, 2.8+), read when our recipe is made, not at import.
    return os.getenv("NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES", "0") == "1"


@dataclass(frozen=True, kw_only=True)
class Float8CurrentScaling:
    """TE's Float8CurrentScaling: every tensor is scaled by its own amax when it is quantized.

    `amax_epsilon` is TE's QParams.amax_epsilon (a floor under amax), which TE's modules read from
    the recipe's fp8_quant_* QParams; teswap.precision.te_glue sets those on TE's recipe object.
    """

    fp8_format: Format = Format.HYBRID
    use_power_2_scales: bool = field(default_factory=_power_2_scales_default)
    amax_epsilon: float = 0.0

    def __post_init__(self) -> None:
        _check_format(self.fp8_format, "Float8CurrentScaling")
        if not isinstance(self.use_power_2_scales, bool):
            raise TypeError(f"Float8CurrentScaling.use_power_2_scales must be a bool, "
                            f"got {self.use_power_2_scales!r}")
        epsilon = self.amax_epsilon
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < math.inf:
            raise ValueError(f"Float8CurrentScaling.amax_epsilon must be a finite float >= 0, "
                             f"got {epsilon!r}")


def _env_default(name: str, default: str = "0") -> Callable[[], bool]:
    # TE reads these when its recipe module is imported; ours when the recipe is made.
    return lambda: os.getenv(name, default) == "1"


def _check_block_dim(value: object, field_name: str) -> None:
    if value not in (1, 2) or isinstance(value, bool):
        raise ValueError(f"Float8BlockScaling.{field_name} must be 1 or 2 (1D or 2D blocks), got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Float8BlockScaling:
    """TE's Float8BlockScaling (2.3+): one fp32 scale per 1x128 tile (dim 1) or 128x128 block (dim 2).

    Defaults are TE's: 1D tiles for inputs and gradients, 2D blocks for weights, E4M3, power-of-2
    scales unless use_f32_scales (TE's default from NVTE_FP8_BLOCK_SCALING_FP32_SCALES). TE's modules
    read the power-of-2 choice from its fp8_quant_* QParams (power_2_scale = not use_f32_scales).
    """

    fp8_format: Format = Format.E4M3
    use_f32_scales: bool = field(default_factory=_env_default("NVTE_FP8_BLOCK_SCALING_FP32_SCALES"))
    x_block_scaling_dim: int = 1
    w_block_scaling_dim: int = 2
    grad_block_scaling_dim: int = 1

    def __post_init__(self) -> None:
        _check_format(self.fp8_format, "Float8BlockScaling")
        if not isinstance(self.use_f32_scales, bool):
            raise TypeError(f"Float8BlockScaling.use_f32_scales must be a bool, got {self.use_f32_scales!r}")
        dims = {"x_block_scaling_dim": self.x_block_scaling_dim, "w_block_scaling_dim": self.w_block_scaling_dim,
                "grad_block_scaling_dim": self.grad_block_scaling_dim}
        for key, value in dims.items():
            _check_block_dim(value, key)
        if sum(value == 2 for value in dims.values()) > 1:  # TE asserts: "2D by 2D block gemm not supported."
            raise ValueError(f"Float8BlockScaling: 2D by 2D block GEMM is not supported (TE), got {dims}")


@dataclass(frozen=True, kw_only=True)
class MXFP8BlockScaling:
    """TE's MXFP8BlockScaling: blocks of 32 along the reduction dim sharing an E8M0 (power-of-2) scale.

    `margin` is TE's field; TE's MXFP8 quantizers do not read it (nor does the emulation)."""

    margin: int = 0
    fp8_format: Format = Format.E4M3

    def __post_init__(self) -> None:
        _check_format(self.fp8_format, "MXFP8BlockScaling")


@dataclass(frozen=True, kw_only=True)
class NVFP4BlockScaling:
    """TE's NVFP4BlockScaling (2.8+): E2M1 values, 1x16 blocks with E4M3 scales and an fp32 tensor scale;
    16x16 blocks for weights, the random Hadamard transform on the column-wise (wgrad) copies of inputs
    and gradients, stochastic rounding of gradients, each unless disabled (TE's env defaults).

    stochastic_rounding_seed is teswap's, not TE's: it seeds each GEMM's rounding stream (TE's kernel
    draws from its own RNG), so an emulated run is reproducible.
    """

    disable_rht: bool = field(default_factory=_env_default("NVTE_NVFP4_DISABLE_RHT"))
    disable_stochastic_rounding: bool = field(default_factory=_env_default("NVTE_NVFP4_DISABLE_STOCHASTIC_ROUNDING"))
    disable_2d_quantization: bool = field(default_factory=_env_default("NVTE_NVFP4_DISABLE_2D_QUANTIZATION"))
    stochastic_rounding_seed: int = 0

    def __post_init__(self) -> None:
        for key in ("disable_rht", "disable_stochastic_rounding", "disable_2d_quantization"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"NVFP4BlockScaling.{key} must be a bool, got {getattr(self, key)!r}")


Recipe = DelayedScaling | Float8CurrentScaling | Float8BlockScaling | MXFP8BlockScaling | NVFP4BlockScaling

# The recipes the torch backend emulates, by TE's class name (teswap.precision.table names each one).
EMULATED: dict[str, Callable[[], Recipe]] = {
    "DelayedScaling": DelayedScaling,
    "Float8CurrentScaling": Float8CurrentScaling,
    "Float8BlockScaling": Float8BlockScaling,
    "MXFP8BlockScaling": MXFP8BlockScaling,
    "NVFP4BlockScaling": NVFP4BlockScaling,
}
_NOT_EMULATED: dict[str, str] = {}  # recipe class -> why the torch backend cannot run it
# Precision name -> our recipe factory, for every FP8 precision the torch backend emulates.
RECIPES: dict[str, Callable[[], Recipe]] = {
    name: EMULATED[p.fp8_recipe] for name, p in PRECISIONS.items() if p.fp8_recipe in EMULATED
}


def unsupported_reason(name: str) -> str | None:
    """Why the torch backend cannot run FP8 precision `name`, or None when it can."""
    if name in RECIPES:
        return None
    precision = PRECISIONS.get(name)
    if precision is not None and precision.fp8_recipe in _NOT_EMULATED:
        return _NOT_EMULATED[precision.fp8_recipe]
    return f"unknown FP8 recipe {name!r}; the torch backend emulates {', '.join(RECIPES)}"

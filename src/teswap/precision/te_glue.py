"""TE's FP8 recipes and autocast, built from teswap's recipe settings (imports TE only when called)."""

from __future__ import annotations

from contextlib import AbstractContextManager as ContextManager
from typing import Any

from teswap.hardware.probe import Availability
from teswap.precision.recipes import RECIPES, DelayedScaling, Float8CurrentScaling
from teswap.precision.table import get_precision

# Which TE availability function gates which recipe class (transformer_engine.pytorch, TE >= 2.9).
_AVAILABILITY_FUNCTIONS = {"DelayedScaling": "is_fp8_available", "Float8CurrentScaling": "is_fp8_available",
                           "Float8BlockScaling": "is_fp8_block_scaling_available",
                           "MXFP8BlockScaling": "is_mxfp8_available"}


def te_recipe(name: str) -> Any:
    """The transformer_engine.common.recipe object for precision `name`, with teswap's settings."""
    from transformer_engine.common import recipe as te

    recipe_class = get_precision(name).fp8_recipe
    if recipe_class is None:
        raise ValueError(f"no TE recipe for precision {name!r}")
    ours = RECIPES[name]() if name in RECIPES else None
    if isinstance(ours, DelayedScaling):
        return te.DelayedScaling(margin=ours.margin, fp8_format=te.Format[ours.fp8_format.name],
                                 amax_history_len=ours.amax_history_len, amax_compute_algo=ours.amax_compute_algo)
    if isinstance(ours, Float8CurrentScaling):
        return te.Float8CurrentScaling(fp8_format=te.Format[ours.fp8_format.name])
    return getattr(te, recipe_class)()  # block scalings: TE's own defaults


def te_autocast(name: str) -> ContextManager[None]:
    """te.pytorch.autocast(recipe=...) (TE >= 2.9), else the older fp8_autocast(fp8_recipe=...)."""
    import transformer_engine.pytorch as te

    recipe = te_recipe(name)
    if hasattr(te, "autocast"):
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def te_recipe_availability(name: str) -> Availability:
    """TE's own answer for this recipe on this GPU (block scaling: SM 9.0 + CUDA 12.9; MXFP8: SM 10.x)."""
    import transformer_engine.pytorch as te

    function_name = _AVAILABILITY_FUNCTIONS[get_precision(name).fp8_recipe or ""]
    function = getattr(te, function_name, None)
    if function is None:  # TE < 2.9 keeps them on FP8GlobalStateManager, returning (bool, reason)
        from transformer_engine.pytorch.fp8 import FP8GlobalStateManager

        ok, reason = getattr(FP8GlobalStateManager, function_name)()
    else:
        ok, reason = function(return_reason=True)
    return Availability(bool(ok), "" if ok else f"TransformerEngine: {reason}")

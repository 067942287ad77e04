"""TE's FP8 recipe objects and autocast, built from teswap's recipe settings for the installed TE version.

TE's modules do not read Float8CurrentScaling's power-of-2 and epsilon settings from the constructor:
every TE 2.2 ... 2.20 LayerNormLinear / Linear / LayerNormMLP sets its GEMM quantizers from the
recipe's `fp8_quant_fwd_inp`, `fp8_quant_fwd_weight`, `fp8_quant_bwd_grad` (QParams(power_2_scale,
amax_epsilon)), class attributes fixed when transformer_engine.common.recipe is imported (from the
env var NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES since 2.8, False before). The `use_power_2_scales`
field (2.8+) reaches only quantizers those modules leave alone. So teswap passes the field where it
exists and sets the three QParams on the recipe instance, which is what TE's modules read.
Fields whose TE default comes from the environment (backward_override, 2.15+) are pinned to what the
torch twin emulates. Imports TE only when called.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import contextmanager
from contextvars import ContextVar
from enum import Enum
from typing import Any

from teswap.errors import UnsupportedConfigError
from teswap.hardware import te_api
from teswap.hardware.probe import Availability, probe_te_recipe
from teswap.precision.recipes import RECIPES, DelayedScaling, Float8BlockScaling, Float8CurrentScaling
from teswap.precision.table import get_precision

QPARAMS_FIELDS = ("fp8_quant_fwd_inp", "fp8_quant_fwd_weight", "fp8_quant_bwd_grad")
FP4_QPARAMS_FIELDS = ("fp4_quant_fwd_inp", "fp4_quant_fwd_weight", "fp4_quant_bwd_grad")  # NVFP4 (__post_init__)


def te_recipe(name: str) -> Any:
    """The transformer_engine.common.recipe object for precision `name`, with teswap's settings."""
    from transformer_engine.common import recipe as te

    recipe_class = get_precision(name).fp8_recipe
    if recipe_class is None:
        raise ValueError(f"no TE recipe for precision {name!r}")
    installed = te_api.imported_te_version()
    too_old = te_api.needs_version(recipe_class, te_api.RECIPE_SUPPORT[recipe_class].since, installed)
    if too_old:
        raise UnsupportedConfigError(too_old)
    ours = RECIPES[name]() if name in RECIPES else None
    pinned = {"backward_override": None} if installed >= te_api.BACKWARD_OVERRIDE_SINCE else {}
    if isinstance(ours, DelayedScaling):
        return te.DelayedScaling(margin=ours.margin, fp8_format=te.Format[ours.fp8_format.name],
                                 amax_history_len=ours.amax_history_len, amax_compute_algo=ours.amax_compute_algo,
                                 **pinned)
    if isinstance(ours, Float8CurrentScaling):
        return _current_scaling(te, ours, installed, pinned)
    return _block_scaling(te, recipe_class, ours)


# Fields of TE's block-scaled recipes whose TE default comes from the environment or selects a mode the
# torch twin does not emulate, pinned to what it emulates (each only where the installed TE has it).
BLOCK_PINNED = {"backward_override": None, "enable_2d_quantization": False, "row_scaled_activation": False,
                "nvfp4_4over6": "none"}


def _block_scaling(te: Any, recipe_class: str, ours: Any) -> Any:
    """TE's Float8BlockScaling / MXFP8BlockScaling / NVFP4BlockScaling with teswap's settings, by TE's field names.

    Every field of ours that the installed TE's class has is passed (formats by name); teswap-only
    fields (NVFP4's stochastic_rounding_seed) are not. Float8BlockScaling's power-of-2 choice reaches
    TE's modules through its fp8_quant_* QParams class attributes, fixed at TE's import from the
    environment, so they are set on the instance (as for Float8CurrentScaling).
    """
    cls = getattr(te, recipe_class)
    names = {field.name for field in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(ours):
        if field.name in names:
            value = getattr(ours, field.name)
            kwargs[field.name] = te.Format[value.name] if isinstance(value, Enum) else value
    kwargs |= {key: value for key, value in BLOCK_PINNED.items() if key in names}
    recipe = cls(**kwargs)
    if isinstance(ours, Float8BlockScaling):
        installed = te_api.imported_te_version()
        qparams = te_api.te_attribute(te, "QParams", installed)(power_2_scale=not ours.use_f32_scales,
                                                               amax_epsilon=0.0)
        for name in QPARAMS_FIELDS:
            setattr(recipe, name, qparams)
    return recipe


def _current_scaling(te: Any, ours: Float8CurrentScaling, installed: te_api.TEVersion, pinned: dict) -> Any:
    """Float8CurrentScaling with power-of-2 scales and amax epsilon where TE's modules read them."""
    if installed >= te_api.POWER_2_FIELD_SINCE:
        pinned = {**pinned, "use_power_2_scales": ours.use_power_2_scales}
    recipe = te.Float8CurrentScaling(fp8_format=te.Format[ours.fp8_format.name], **pinned)
    qparams = te_api.te_attribute(te, "QParams", installed)(power_2_scale=ours.use_power_2_scales,
                                                           amax_epsilon=float(ours.amax_epsilon))
    for field in QPARAMS_FIELDS:
        setattr(recipe, field, qparams)  # shadows the class attribute of the same name, for this recipe only
    return recipe


_AMAX_GROUP: ContextVar[Any] = ContextVar("teswap_amax_reduction_group", default=None)


@contextmanager
def amax_reduction_group(group: Any) -> Iterator[None]:
    """TE autocasts opened in the block reduce DelayedScaling amaxes over `group` (a torch.distributed process
    group; None: TE's default, the WORLD group once one exists). A launch of whole-model replicas passes each
    rank's own group, so the swapped side pays no all-reduce stock does not."""
    token = _AMAX_GROUP.set(group)
    try:
        yield
    finally:
        _AMAX_GROUP.reset(token)


def te_autocast(name: str) -> ContextManager[None]:
    """TE's FP8 context with teswap's recipe: autocast(recipe=...) on TE >= 2.9, else fp8_autocast(fp8_recipe=...),
    reducing amaxes over the enclosing `amax_reduction_group` block's group, if any."""
    import transformer_engine.pytorch as te

    entry, recipe_keyword = te_api.autocast_entry(te)
    group = _AMAX_GROUP.get()
    extra = {} if group is None else {"amax_reduction_group" if recipe_keyword == "recipe" else "fp8_group": group}
    return entry(enabled=True, **{recipe_keyword: te_recipe(name)}, **extra)


def te_recipe_availability(name: str) -> Availability:
    """Whether the installed TE and this GPU can run precision `name`'s recipe, with TE's reason if not."""
    return probe_te_recipe(get_precision(name).fp8_recipe or "")


def te_recipe_fields(name: str) -> dict[str, Any]:
    """Every field of the TE recipe object teswap builds for `name`, as TE holds it (for records)."""
    recipe = te_recipe(name)
    fields = {field.name: getattr(recipe, field.name) for field in dataclasses.fields(recipe)}
    qparams = (*QPARAMS_FIELDS, *FP4_QPARAMS_FIELDS)
    fields |= {field: getattr(recipe, field) for field in qparams if hasattr(recipe, field)}
    return {"type": type(recipe).__name__, "te_version": te_api.format_version(te_api.imported_te_version()),
            **{key: _plain(value) for key, value in fields.items()}}


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a recipe field (enums by name, dataclasses as dicts, callables by name)."""
    if isinstance(value, Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _plain(item) for key, item in dataclasses.asdict(value).items()}
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return value

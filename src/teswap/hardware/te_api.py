"""Which TransformerEngine API is installed, and the TE version each feature teswap uses needs.

TE 2.x moved its FP8 entry points twice. Every "since" below was read from NVIDIA/TransformerEngine
at the tags v2.0 ... v2.18 and main (2.20.0.dev0, d0067d0); a refusal always names the version a
feature needs and the version installed.

    feature                                            since  where
    DelayedScaling, MXFP8BlockScaling                  2.0    transformer_engine.common.recipe
    fp8_autocast(fp8_recipe=...)                       2.0    transformer_engine.pytorch (deprecated from 2.9)
    FP8GlobalStateManager.is_fp8_available() etc.      2.0    transformer_engine.pytorch.fp8 -> (ok, reason)
    Float8CurrentScaling (+ QParams fp8_quant_*)       2.2
    Float8BlockScaling, ..is_fp8_block_scaling_available  2.3
    Float8CurrentScaling(use_power_2_scales=...)       2.8
    NVFP4BlockScaling, is_nvfp4_available              2.8    (teswap: SM 10.x only)
    autocast(recipe=...), is_*_available(return_reason)  2.9  transformer_engine.pytorch
    recipes' backward_override (env default)           2.15

Nothing here imports TE at import time; the functions that call TE import it when called.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from teswap.errors import UnsupportedConfigError

TEVersion = tuple[int, int]
MIN_TE_VERSION: TEVersion = (2, 0)  # the TransformerLayer arguments and RoPE format teswap passes exist from 2.0
AUTOCAST_SINCE: TEVersion = (2, 9)  # te.pytorch.autocast(recipe=...); before: fp8_autocast(fp8_recipe=...)
TOP_LEVEL_CHECKS_SINCE: TEVersion = (2, 9)  # is_*_available at transformer_engine.pytorch
POWER_2_FIELD_SINCE: TEVersion = (2, 8)  # Float8CurrentScaling(use_power_2_scales=...)
BACKWARD_OVERRIDE_SINCE: TEVersion = (2, 15)  # backward_override field, default from NVTE_BACKWARD_OVERRIDE


@dataclass(frozen=True)
class RecipeSupport:
    """One recipe class: the TE version that introduced it, TE's check for it, what that check asks."""

    since: TEVersion
    check: str  # the name of TE's availability function (module-level from 2.9, FP8GlobalStateManager before)
    hardware: str  # TE's own condition, as its check_*_support functions state it


_ADA_OR_LATER = "compute capability >= 8.9 (8.9 also needs CUDA >= 12.1 and cuBLASLt >= 12.1.3)"
RECIPE_SUPPORT = {
    "DelayedScaling": RecipeSupport((2, 0), "is_fp8_available", _ADA_OR_LATER),
    "Float8CurrentScaling": RecipeSupport((2, 2), "is_fp8_available", _ADA_OR_LATER),
    "Float8BlockScaling": RecipeSupport((2, 3), "is_fp8_block_scaling_available",
                                        "compute capability >= 9.0 and CUDA >= 12.9 (TE 2.3-2.8: 9.x only)"),
    "MXFP8BlockScaling": RecipeSupport((2, 0), "is_mxfp8_available",
                                       "compute capability 10.x or 11.x (TE 2.0-2.5: >= 10.0)"),
    "NVFP4BlockScaling": RecipeSupport((2, 8), "is_nvfp4_available",
                                       "compute capability 10.x (TE's own check: >= 10.0)"),
}
# Recipes teswap runs on the te backend only on these compute capability majors, beyond TE's own check.
RECIPE_MAJORS = {"NVFP4BlockScaling": (10,)}


def format_version(version: TEVersion) -> str:
    return f"{version[0]}.{version[1]}"


def parse_te_version(text: str) -> TEVersion:
    """(major, minor) of a TE version string such as "2.9.0", "2.20.0.dev0+d0067d0"."""
    match = re.match(r"\s*(\d+)\.(\d+)", text)
    if match is None:
        raise UnsupportedConfigError(f"cannot read TransformerEngine's version {text!r}")
    return int(match[1]), int(match[2])


def imported_te_version() -> TEVersion:
    """The version of the transformer_engine already imported (its `__version__`, set by TE since 1.x)."""
    package = sys.modules.get("transformer_engine")
    text = getattr(package, "__version__", None)
    if not isinstance(text, str):
        raise UnsupportedConfigError("transformer_engine has no __version__; cannot tell which TE API to call")
    return parse_te_version(text)


def needs_version(feature: str, since: TEVersion, installed: TEVersion) -> str | None:
    """The refusal for `feature` on TE `installed`, or None when it is new enough."""
    if installed >= since:
        return None
    return (f"{feature} needs TransformerEngine >= {format_version(since)}; "
            f"{format_version(installed)} is installed")


def recipe_check(recipe_class: str) -> tuple[bool, str]:
    """TE's own answer for `recipe_class` on this GPU, through the check of the installed TE version."""
    support = RECIPE_SUPPORT.get(recipe_class)
    if support is None:
        return False, f"teswap knows no TransformerEngine recipe {recipe_class!r}"
    installed = imported_te_version()
    too_old = needs_version(recipe_class, support.since, installed)
    if too_old:
        return False, too_old
    ok, reason = _availability_function(support.check, installed)()
    if ok:
        return _capability_check(recipe_class, support)
    return False, (f"TransformerEngine {format_version(installed)}: {str(reason).rstrip('.')}; "
                   f"{recipe_class} needs {support.hardware}")


def _capability_check(recipe_class: str, support: RecipeSupport) -> tuple[bool, str]:
    """teswap's own condition on the GPU where TE's check is looser than what teswap admits."""
    majors = RECIPE_MAJORS.get(recipe_class)
    if majors is None:
        return True, ""
    import torch

    capability = torch.cuda.get_device_capability()
    if capability[0] in majors:
        return True, ""
    return False, (f"{recipe_class} runs on the te backend on {support.hardware}; this GPU is SM "
                   f"{capability[0]}.{capability[1]} (teswap admits it on SM 10.x only)")


def _availability_function(name: str, installed: TEVersion) -> Callable[[], tuple[bool, str]]:
    """TE's check `name` as a no-argument function returning (ok, reason), for the installed version."""
    if installed >= TOP_LEVEL_CHECKS_SINCE:  # transformer_engine.pytorch.<name>(return_reason=True)
        import transformer_engine.pytorch as te

        function = te_attribute(te, name, installed)
        return lambda: function(return_reason=True)
    # TE < 2.9: transformer_engine.pytorch.fp8.FP8GlobalStateManager.<name>() -> (ok, reason)
    from transformer_engine.pytorch import fp8

    manager = te_attribute(fp8, "FP8GlobalStateManager", installed)
    return te_attribute(manager, name, installed)


def te_attribute(owner: Any, name: str, installed: TEVersion) -> Any:
    """`owner.name`, or a refusal saying TE's layout moved (the version says it should be there)."""
    value = getattr(owner, name, None)
    if value is None:
        where = getattr(owner, "__name__", type(owner).__name__)
        raise UnsupportedConfigError(
            f"TransformerEngine {format_version(installed)} has no {where}.{name}, where teswap's TE glue "
            f"expects it for this version: TE's layout moved; teswap needs updating for it")
    return value


def autocast_entry(te_pytorch: Any) -> tuple[Callable[..., Any], str]:
    """TE's FP8 context manager and the keyword its recipe goes in: autocast(recipe=) from 2.9, else
    fp8_autocast(fp8_recipe=) (still present, deprecated, from 2.9)."""
    installed = imported_te_version()
    if installed >= AUTOCAST_SINCE:
        return te_attribute(te_pytorch, "autocast", installed), "recipe"
    return te_attribute(te_pytorch, "fp8_autocast", installed), "fp8_recipe"


# Environment variables TE reads that change what it computes for teswap's layers (read from TE's
# source): attention backend choice and determinism, norm implementation, FP8 recipe defaults, the
# softmax / fusion paths. TE reads most of them once, at import or first use. Records keep every
# NVTE_* variable that is set (a superset of these); an absent name means unset, TE's default.
NUMERICS_ENV_VARS = (
    # dot_product_attention/utils.py: which attention backend runs
    "NVTE_FLASH_ATTN", "NVTE_FLASH_ATTN_V2", "NVTE_FLASH_ATTN_V3", "NVTE_FLASH_ATTN_V4",
    "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN", "NVTE_FUSED_ATTN_BACKEND",  # fused_attn.cpp: cuDNN sub-backend
    "NVTE_ALLOW_NONDETERMINISTIC_ALGO",  # DotProductAttention: deterministic backward or not
    "NVTE_APPLY_QK_LAYER_SCALING",  # UnfusedDotProductAttention: scales by layer_number (fp16 only)
    "NVTE_MASKED_SOFTMAX_FUSION",  # unfused attention's softmax kernel
    "NVTE_NORM_FWD_USE_CUDNN", "NVTE_NORM_BWD_USE_CUDNN",  # normalization/common.cpp: cuDNN or TE's kernels
    "NVTE_ZERO_CENTERED_GAMMA_IN_WTYPE",  # normalization/common.cpp: where gamma + 1 is rounded
    "NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES",  # recipe: Float8CurrentScaling's power-of-2 default (>= 2.8)
    "NVTE_FP8_BLOCK_SCALING_FP32_SCALES",  # recipe: Float8BlockScaling.use_f32_scales default (>= 2.3)
    "NVTE_BACKWARD_OVERRIDE",  # recipe: backward_override default (>= 2.15)
    "NVTE_UNFUSED_FP8_UPDATE",  # DelayedScaling: the amax/scale update path
    "NVTE_FP8_DPA_BWD", "NVTE_DPA_FP8_RECIPE",  # FP8 attention (off unless fp8_dpa)
    "NVTE_TORCH_COMPILE",  # jit fusions (torch.compile or not)
)


def numerics_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every NVTE_* environment variable that is set (NUMERICS_ENV_VARS are the ones known to matter)."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in sorted(environ.items()) if name.startswith("NVTE_")}

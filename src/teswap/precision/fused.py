"""The GEMM inputs TE's fused kernels write: what RMSNorm and SwiGLU hand the next GEMM, per recipe.

TE's normalization and gated-activation kernels compute in fp32 and, under FP8, write the next GEMM's
FP8 input themselves. What that input is depends on the recipe's quantizer (read from TE's
pytorch/csrc/extensions/{normalization,activation}.cpp, normalization/rmsnorm/rmsnorm_fwd_kernels.cuh,
util/vectorized_pointwise.h gated_act_kernel and cast/fp8/gated_fp8.cuh), y and p being the fp32
results of the norm and of silu(a) * b:

    recipe                RMSNorm -> qkv / fc1 GEMM input       SwiGLU -> fc2 GEMM input
    none                  bf16(y)                               bf16(p): one rounding
    DelayedScaling        fp8(y * scale), amax |y|              fp8(p * scale), amax |p|   (FULLY_FUSED: no bf16)
    Float8CurrentScaling  fp8(bf16(y) * s), s from amax |bf16(y)|   fp8(bf16(p) * s), s from amax |p|

The current-scaling amaxes are TE >= 2.10's (norm; 2.7-2.9 took it from fp32 y) and TE >= 2.7's
(SwiGLU; 2.2-2.6 took it from bf16(p)). A GEMM fed by anything else (attention output, stock
linears) quantizes the high-precision tensor it is given, with that tensor's amax. Under the block-scaled
recipes (Float8BlockScaling, MXFP8, NVFP4) every GEMM quantizes the bf16 tensor it reads, per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from teswap.precision.emulation import active_recipe, tensor_amax
from teswap.precision.recipes import DelayedScaling, Float8CurrentScaling, Recipe


@dataclass(frozen=True)
class KernelOutput:
    """One fused kernel's output: rounded to the activation dtype, and (where a recipe needs it) before."""

    rounded: torch.Tensor  # what a non-FP8 GEMM reads; gradients flow through it
    exact: torch.Tensor | None  # the fp32 value it was rounded from (detached); kept under DelayedScaling
    exact_amax: torch.Tensor | None  # max |exact| as the kernel reduced it; None: take it from `exact`
    current_amax_exact: bool  # Float8CurrentScaling: scale from |exact| (gated kernels) or |rounded| (norms)


def kernel_needs() -> tuple[bool, bool]:
    """(keep the fp32 value, reduce its amax) for a fused kernel's output under the active FP8 recipe."""
    recipe = active_recipe()  # block-scaled recipes reduce their own per-block amaxes from the rounded value
    return isinstance(recipe, DelayedScaling), isinstance(recipe, (DelayedScaling, Float8CurrentScaling))


def quantization_source(output: KernelOutput, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(the tensor the GEMM's FP8 input is cast from, the amax its scale comes from) under `recipe`."""
    if isinstance(recipe, DelayedScaling):
        if output.exact is None:
            raise RuntimeError("a DelayedScaling GEMM input needs the kernel's fp32 value; none was kept")
        amax = output.exact_amax if output.exact_amax is not None else tensor_amax(output.exact)
        return output.exact, amax
    if output.current_amax_exact:
        if output.exact_amax is None:
            raise RuntimeError("a current-scaling GEMM input needs the kernel's fp32 amax; none was reduced")
        return output.rounded, output.exact_amax
    return output.rounded, tensor_amax(output.rounded)

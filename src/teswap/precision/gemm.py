"""The one place the `torch` backend's layers do their GEMMs (qkv, proj, fc1, fc2).

Keeping every matmul behind `GemmSite` is what lets the FP8 recipe emulation quantize exactly the
four GEMMs TE runs in FP8, and nothing else (norms, RoPE, attention and residuals stay high
precision, as in TE). A GEMM fed by one of TE's fused kernels (RMSNorm -> qkv / fc1, SwiGLU -> fc2)
takes that kernel's KernelOutput and casts its FP8 input as the kernel would (teswap.precision.fused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from teswap.precision.blockwise import BLOCK_RECIPES, BlockScaling, block_linear
from teswap.precision.emulation import SiteScaling, active_recipe, fp8_linear, site_scaling
from teswap.precision.fused import KernelOutput, quantization_source


class GemmSite:
    """One GEMM of a TE-layout layer, named as TE names its module (qkv, proj, fc1, fc2)."""

    def __init__(self, name: str) -> None:
        self.name = name
        # This GEMM's FP8 scaling state (DelayedScaling keeps amax histories here, as each TE module
        # keeps its own fp8_meta); made on first FP8 use, replaced when the recipe or device changes.
        self.fp8_scaling: SiteScaling | BlockScaling | None = None

    def __call__(self, inp: torch.Tensor | KernelOutput, weight: torch.Tensor) -> torch.Tensor:
        """y = inp @ weight.T (no bias: TE's Llama layers are bias-free); FP8 inside fp8_autocast."""
        recipe = active_recipe()
        tensor = inp.rounded if isinstance(inp, KernelOutput) else inp
        if recipe is None:
            return F.linear(tensor, weight)
        if isinstance(recipe, BLOCK_RECIPES):
            # Block-scaled recipes quantize the GEMM input TE's fused kernels write in the activation dtype.
            current = self.fp8_scaling
            if not (isinstance(current, BlockScaling) and current.matches(recipe, tensor.device)):
                current = self.fp8_scaling = BlockScaling(recipe, tensor.device)
            return block_linear(tensor, weight, current, name=self.name)
        scaling = self.fp8_scaling if isinstance(self.fp8_scaling, SiteScaling) else None
        self.fp8_scaling = site_scaling(scaling, recipe, tensor.device)
        if not isinstance(inp, KernelOutput):
            return fp8_linear(tensor, weight, self.fp8_scaling, name=self.name)
        source, amax = quantization_source(inp, recipe)
        return fp8_linear(tensor, weight, self.fp8_scaling, name=self.name, source=source, source_amax=amax)

    def __repr__(self) -> str:
        return f"GemmSite({self.name!r})"


class NoopCat(torch.autograd.Function):
    """Hand a GEMM the fused weight that split parameters are views of; split its gradient back.

    TE keeps query/key/value weights as views of one buffer so the fused QKV GEMM needs no copy;
    copying per forward would double the QKV weights saved for backward.
    """

    @staticmethod
    def forward(ctx, fused: torch.Tensor, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = [p.shape[0] for p in parts]
        return fused.view_as(fused)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return (None, *grad.split(ctx.sizes, dim=0))


def is_view_chain(fused: torch.Tensor | None, parts: list[torch.Tensor]) -> bool:
    """True when `parts` are consecutive row blocks of `fused`, in order, sharing its storage."""
    if fused is None:
        return False
    offset = 0
    for part in parts:
        expected_ptr = fused.data_ptr() + offset * fused.stride(0) * fused.element_size()
        if (
            part.device != fused.device
            or part.dtype != fused.dtype
            or not part.is_contiguous()
            or part.data_ptr() != expected_ptr
        ):
            return False
        offset += part.shape[0]
    return offset == fused.shape[0]


def fuse_in_place(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Re-point `params` at consecutive row blocks of one new buffer and return that buffer."""
    with torch.no_grad():
        fused = torch.cat([p.detach() for p in params], dim=0)
        offset = 0
        for p in params:
            p.data = fused[offset : offset + p.shape[0]]
            offset += p.shape[0]
    return fused

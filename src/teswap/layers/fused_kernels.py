"""TE's RMSNorm and gated-activation kernels as the torch twin runs them: fp32 compute, one rounding.

Both kernels compute in fp32 and round their result to the activation dtype once (TE's rmsnorm
forward kernel; the gated kernel `act(a) * b` of util/vectorized_pointwise.h and
cast/fp8/gated_fp8.cuh, and its dswiglu/dgeglu twin in backward). SwiGLU's act is SiLU, GeGLU's
TE's GELU, the tanh approximation (common/util/math.h: 0.5 x (1 + tanh(0.79788456 x (1 + 0.044715
x^2)))). They return a KernelOutput so the GEMM they feed can cast its FP8 input the way TE's fused
kernel writes it (teswap.precision.fused).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from teswap.precision.emulation import tensor_amax
from teswap.precision.fused import KernelOutput, kernel_needs

# Rows of SwiGLU computed at once, sized so the fp32 temporaries stay near 64 MiB (TE's kernel has none).
_CHUNK_ELEMENTS = 1 << 24


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """TE computes norms, activations and RoPE in fp32; an fp64 reference run keeps fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def rms_norm_output(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered_gamma: bool) -> KernelOutput:
    """TE's RMSNorm y = x / sqrt(mean(x^2) + eps) * gamma in fp32, rounded once; y kept for FP8 casts."""
    compute = compute_dtype(x)
    xf = x.to(compute)
    gamma = weight.to(compute) + 1.0 if zero_centered_gamma else weight.to(compute)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * gamma
    keep_exact, _ = kernel_needs()
    # TE's norms take a current-scaling amax from the rounded output (TE >= 2.10).
    return KernelOutput(rounded=y.to(x.dtype), exact=y.detach() if keep_exact else None, exact_amax=None,
                        current_amax_exact=False)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered_gamma: bool) -> torch.Tensor:
    """TE's RMSNorm in fp32 (fp64 stays fp64), cast back once."""
    return rms_norm_output(x, weight, eps, zero_centered_gamma).rounded


def _dsilu(a: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return a * s * (1 - s) + s


_GELU_C = 0.79788456  # sqrt(2 / pi), TE's constant
_GELU_K = 0.044715


def _gelu_tanh(a: torch.Tensor) -> torch.Tensor:
    return F.gelu(a, approximate="tanh")  # PyTorch's tanh GELU: TE's formula and HF's gelu_pytorch_tanh


def _dgelu_tanh(a: torch.Tensor) -> torch.Tensor:
    """TE's dgelu (the tanh form's derivative)."""
    t = torch.tanh(_GELU_C * a * (1.0 + _GELU_K * a * a))
    return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_K * a * a)


# TE's activation name -> (act, act') of the gated kernel's first half
GATED_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "swiglu": (F.silu, _dsilu), "geglu": (_gelu_tanh, _dgelu_tanh)}


def swiglu(fc1_out: torch.Tensor) -> KernelOutput:
    """silu(first half) * second half in fp32, rounded once, as TE's gated kernel (fc1 is [gate; up])."""
    return gated_activation(fc1_out, "swiglu")


def gated_activation(fc1_out: torch.Tensor, activation: str) -> KernelOutput:
    """act(first half) * second half in fp32, rounded once, as TE's gated kernels (fc1 is [gate; up])."""
    keep_exact, want_amax = kernel_needs()
    rounded, exact, amax = _Gated.apply(fc1_out, activation, keep_exact, want_amax)
    # TE's gated kernels reduce the current-scaling amax from the fp32 product (TE >= 2.7).
    return KernelOutput(rounded=rounded, exact=exact if keep_exact else None,
                        exact_amax=amax if want_amax else None, current_amax_exact=True)


def _row_blocks(rows: int, width: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [slice(start, start + step) for start in range(0, rows, step)]


class _Gated(torch.autograd.Function):
    """Forward: act(a) * b per element in fp32, one rounding. Backward: TE's dswiglu/dgeglu, fp32, one rounding.

    Saves only fc1's output for backward, as TE does; fp32 temporaries are made a block of rows at a time.
    """

    @staticmethod
    def forward(ctx, fc1_out: torch.Tensor, activation: str, keep_exact: bool,  # type: ignore[override]
                want_amax: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        act, _ = GATED_ACTIVATIONS[activation]
        ffn, compute = fc1_out.shape[-1] // 2, compute_dtype(fc1_out)
        both = fc1_out.reshape(-1, 2 * ffn)
        rounded = torch.empty(both.shape[0], ffn, dtype=fc1_out.dtype, device=fc1_out.device)
        exact = torch.empty(both.shape[0] if keep_exact else 0, ffn, dtype=compute, device=fc1_out.device)
        amax = torch.zeros((), dtype=torch.float32, device=fc1_out.device)
        for rows in _row_blocks(both.shape[0], 2 * ffn):
            product = act(both[rows, :ffn].to(compute)).mul_(both[rows, ffn:])
            rounded[rows] = product  # copy_ rounds to nearest even, as the kernel's cast does
            if keep_exact:
                exact[rows] = product
            if want_amax:
                amax = torch.maximum(amax, tensor_amax(product))
        ctx.save_for_backward(fc1_out)
        ctx.activation = activation
        ctx.mark_non_differentiable(exact, amax)
        out_shape = (*fc1_out.shape[:-1], ffn)
        return rounded.view(out_shape), exact.view(out_shape) if keep_exact else exact, amax

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _exact_grad: torch.Tensor, _amax_grad: torch.Tensor):  # type: ignore[override]
        (fc1_out,) = ctx.saved_tensors
        act, slope_of = GATED_ACTIVATIONS[ctx.activation]
        ffn, compute = fc1_out.shape[-1] // 2, compute_dtype(fc1_out)
        both, grads = fc1_out.reshape(-1, 2 * ffn), grad.reshape(-1, ffn)
        dboth = torch.empty_like(both)
        for rows in _row_blocks(both.shape[0], 2 * ffn):
            a, b, g = both[rows, :ffn].to(compute), both[rows, ffn:].to(compute), grads[rows].to(compute)
            dboth[rows, :ffn] = slope_of(a) * g * b  # act'(a) * grad * b
            dboth[rows, ffn:] = g * act(a)  # grad * act(a)
        return dboth.view_as(fc1_out), None, None, None

"""TE's per-tensor FP8 recipes (DelayedScaling, Float8CurrentScaling) emulated in pure PyTorch, on CPU or any GPU;
fp8_autocast also opens regions for the block-scaled recipes (teswap.precision.blockwise).

Under `fp8_autocast(recipe)` every `GemmSite` quantizes its input and weight (E4M3 under HYBRID) and
in backward its output gradient (E5M2 under HYBRID) with per-tensor scales, and multiplies the FP8
operands with `torch._scaled_mm`; everything else stays in high precision, as in TE. A GEMM fed by TE's
fused RMSNorm or SwiGLU kernel casts its input the way that kernel writes it (teswap.precision.fused).

When DelayedScaling scales update (TE semantics, and where this emulation differs):
- Quantization always uses the scale stored at the previous update (1.0 at first), and max-accumulates
  the tensor's amax into row 0 of the amax history.
- Forward (input, weight) scales update when the OUTERMOST `fp8_autocast` exits, if
  `torch.is_grad_enabled()` at that moment, as in TE. Under `no_grad` / `inference_mode` they therefore
  never update and row 0 keeps accumulating; pass `update_forward_scales=True` to the outermost
  autocast to calibrate an inference-only run (False: never update). Only the outermost value counts.
- Backward (grad_output) scales update at the end of the backward pass (an autograd engine callback),
  as TE does after the whole backward. Each site updates its own; the result is TE's.
- Deviations: only sites that ran an FP8 GEMM inside the region are updated at its exit (TE updates
  every registered module; the two differ only for amaxes left over from a region that did not update,
  which we roll in the next time that site runs inside an updating region). An outermost region with
  enabled=False still updates the sites run by enabled inner regions (TE would not). No amax
  all-reduce (one process). Rows are zero-padded to a multiple of 16 where TE raises.

A GemmSite's scaling state is not locked: do not run one model instance in FP8 from two threads at once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from teswap.errors import UnsupportedConfigError
from teswap.precision.recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
    fp8_max,
)

RECIPE_TYPES = (DelayedScaling, Float8CurrentScaling, Float8BlockScaling, MXFP8BlockScaling, NVFP4BlockScaling)

FP32_MAX = torch.finfo(torch.float32).max
ROW_ALIGNMENT = 16  # TE's docs: pad batch*seq to a multiple of 16 for FP8 GEMMs (its check needs 8)


# --- autocast ------------------------------------------------------------------------------------


@dataclass
class _Region:
    recipe: Recipe | None  # None inside fp8_autocast(..., enabled=False)
    pending: set[DelayedScalingState] = field(default_factory=set)  # shared by all nested regions


# A ContextVar, not a global: each thread (and asyncio task) has its own active region.
_REGION: ContextVar[_Region | None] = ContextVar("teswap_fp8_region", default=None)


# How many fp8_autocast regions are open in any thread: a traced graph (torch.compile) cannot read
# the ContextVar, but can read this, and refuses to trace FP8 emulation rather than skip it.
_OPEN_REGIONS = 0


def active_recipe() -> Recipe | None:
    """The recipe GemmSites use right now, or None outside any enabled fp8_autocast."""
    if torch.compiler.is_compiling():
        if _OPEN_REGIONS:
            raise UnsupportedConfigError("the torch backend's FP8 emulation cannot run under torch.compile; "
                                         "compile outside fp8_autocast (bf16/fp32)")
        return None
    region = _REGION.get()
    return None if region is None else region.recipe


@contextmanager
def fp8_autocast(recipe: Recipe, enabled: bool = True, *,
                 update_forward_scales: bool | None = None) -> Iterator[None]:
    """Run GemmSites in FP8 under `recipe`; on leaving the outermost region, update DelayedScaling scales.

    update_forward_scales: None = TE's rule (update iff grad is enabled at exit); True = always
    (calibrate an inference-only run); False = never. Only the outermost region's value counts.
    """
    if not isinstance(recipe, RECIPE_TYPES):
        raise TypeError(f"fp8_autocast needs one of teswap's recipes ({', '.join(t.__name__ for t in RECIPE_TYPES)}), "
                        f"got {recipe!r}")
    outer = _REGION.get()
    region = _Region(recipe if enabled else None, outer.pending if outer is not None else set())
    token = _REGION.set(region)
    global _OPEN_REGIONS
    _OPEN_REGIONS += 1
    try:
        yield
    finally:
        # TE updates in its autocast's __exit__, so an exception does not skip the update.
        _OPEN_REGIONS -= 1
        _REGION.reset(token)
        if outer is None:
            update = torch.is_grad_enabled() if update_forward_scales is None else update_forward_scales
            if update:
                for state in region.pending:
                    state.update_forward()
            region.pending.clear()


def _register_for_forward_update(state: DelayedScalingState) -> None:
    region = _REGION.get()
    if region is not None:
        region.pending.add(state)


# --- scale math and quantization -----------------------------------------------------------------


def tensor_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as an fp32 scalar; NaNs are skipped, as TE's cast kernels (fmaxf) skip them."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return x.detach().abs().nan_to_num(nan=0.0, posinf=math.inf).amax().float()


def correctly_rounded_div(numerator: float, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator as the correctly rounded fp32 quotient, as TE's kernels compute it.

    `python_float / tensor` is not that: PyTorch's __rtruediv__ is reciprocal(denominator) * numerator,
    two roundings, 1 ulp off the true quotient for about a quarter of random denominators.
    """
    denominator = denominator.float()
    return torch.div(torch.full_like(denominator, numerator), denominator)


def _round_down_to_power_of_2(scale: torch.Tensor) -> torch.Tensor:
    # TE clears the fp32 mantissa bits (bits & 0xFF800000); 0xFF800000 as a signed int32 is -2**23.
    return (scale.view(torch.int32) & -(2**23)).view(torch.float32)


def scale_from_amax(amax: torch.Tensor, fp8_max_value: float, *, margin: int = 0, epsilon: float = 0.0,
                    power_2: bool = False, fallback: torch.Tensor | float = 1.0) -> torch.Tensor:
    """TE's scale = fp8_max / amax / 2**margin; `fallback` where amax is 0, inf or NaN; inf -> fp32 max."""
    amax = amax.float()
    amax = torch.where(amax < epsilon, epsilon, amax)  # NaN < epsilon is False: NaN stays NaN, as in TE
    scale = correctly_rounded_div(fp8_max_value * 2.0**-margin, amax)
    scale = torch.where(torch.isinf(scale), FP32_MAX, scale)  # amax so small the scale overflows fp32
    if power_2:
        scale = _round_down_to_power_of_2(scale)
    usable = torch.isfinite(amax) & (amax > 0)
    return torch.where(usable, scale, fallback)


def quantize(x: torch.Tensor, scale: torch.Tensor, fp8_dtype: torch.dtype) -> torch.Tensor:
    """Saturating FP8 cast of x * scale: clamped to +-max (NaN stays NaN), multiplied in fp32 as TE does."""
    limit = fp8_max(fp8_dtype)
    # Without the clamp E5M2 casts overflow to inf; TE's kernels saturate (satfinite).
    return (x.detach().float() * scale).clamp(-limit, limit).to(fp8_dtype)


def dequantize(data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """data * (1 / scale) in `dtype`: what the FP8 GEMM sees (TE multiplies by scale_inv too)."""
    return (data.float() * scale.reciprocal()).to(dtype)


# --- per-GemmSite scaling ------------------------------------------------------------------------


class Role(Enum):
    """The three tensors of a GEMM that TE quantizes."""

    INPUT = 0
    WEIGHT = 1
    GRAD_OUTPUT = 2


class ScalingMeta:
    """Scales [n] and amax history [L, n] of n tensors; row 0 collects the running step's amaxes."""

    def __init__(self, history_len: int, count: int, device: torch.device) -> None:
        self.scale = torch.ones(count, dtype=torch.float32, device=device)
        self.amax_history = torch.zeros(history_len, count, dtype=torch.float32, device=device)

    def record(self, column: int, amax: torch.Tensor) -> None:
        """Max-accumulate `amax` into the running step's slot."""
        self.amax_history[0, column] = torch.maximum(self.amax_history[0, column], amax)

    def update(self, fp8_max_value: float, recipe: DelayedScaling) -> None:
        """TE's fused delayed-scaling update: roll the history, derive amax, recompute the scales."""
        old, last = self.amax_history, self.amax_history[0]
        window = torch.cat([old[1:], last[None]])  # [old[1], ..., old[L-1], last]: L amaxes
        amax = window.amax(0) if recipe.amax_compute_algo == "max" else last
        seen = last != 0
        # TE leaves a tensor with no new amax alone: history unrolled, scale kept (amax 0 -> fallback).
        amax = torch.where(seen, amax, 0.0)
        rolled = window.clone()
        rolled[0] = 0.0  # clear the slot for the next step; old[1] leaves the window
        self.amax_history = torch.where(seen, rolled, old)
        self.scale = scale_from_amax(amax, fp8_max_value, margin=recipe.margin, fallback=self.scale)


class SiteScaling:
    """How one GemmSite scales its tensors under one recipe, on one device."""

    def __init__(self, recipe: DelayedScaling | Float8CurrentScaling, device: torch.device) -> None:
        self.recipe = recipe
        self.device = device
        self._weight: tuple[torch.Tensor, tuple, torch.Tensor, torch.Tensor] | None = None

    def weight_epoch(self) -> int:
        """Changes whenever the weight's scale may have changed without the weight changing."""
        return 0

    def quantized_weight(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(FP8 weight with rows padded to 16, its scale_inv), cached while the weight and its scale stand.

        TE keeps a weight's FP8 copy between GEMMs of one step too (its weight workspace); without the
        cache a one-token decode step would requantize every weight of the model. The key holds the
        weight itself (so its address cannot be reused), its version (bumped by any in-place update,
        an optimizer step included) and the recipe's weight epoch.
        """
        key = (weight._version, tuple(weight.shape), weight.dtype, self.weight_epoch())
        cached = self._weight
        if cached is not None and cached[0] is weight and cached[1] == key:
            return cached[2], cached[3]
        scale = self.scale_for(Role.WEIGHT, weight)
        fp8 = quantize(_pad_rows(weight.detach()), scale, self.dtype_for(Role.WEIGHT))
        if not has_fp8_matmul(weight.device):  # the GEMM runs on the FP8 values in fp32: convert them once
            fp8 = fp8.float()
        self._weight = (weight, key, fp8, scale.reciprocal())
        return fp8, self._weight[3]

    def dtype_for(self, role: Role) -> torch.dtype:
        """The FP8 dtype of `role` under the recipe's format."""
        spec = self.recipe.fp8_format.value
        return spec.backward if role is Role.GRAD_OUTPUT else spec.forward

    def matches(self, recipe: object, device: torch.device) -> bool:
        """True when this state can serve `recipe` on `device` (equal recipes share state)."""
        return self.recipe == recipe and self.device == device

    def scale_for(self, role: Role, x: torch.Tensor) -> torch.Tensor:
        """The fp32 scale to quantize `x` (playing `role`) with; records what the recipe needs."""
        return self.scale_for_amax(role, tensor_amax(x))

    def scale_for_amax(self, role: Role, amax: torch.Tensor) -> torch.Tensor:
        """The fp32 scale for a tensor of `role` whose amax is `amax` (a fused kernel may reduce it)."""
        raise NotImplementedError

    def forward_done(self) -> None:
        """Hook run after this site's FP8 forward GEMM."""

    def backward_done(self) -> None:
        """Hook run after this site's FP8 backward GEMMs."""


class CurrentScalingState(SiteScaling):
    """Float8CurrentScaling: stateless, each tensor's scale comes from its own amax."""

    recipe: Float8CurrentScaling

    def scale_for_amax(self, role: Role, amax: torch.Tensor) -> torch.Tensor:
        """fp8_max / amax, with the recipe's epsilon and power-of-2 option."""
        recipe = self.recipe
        return scale_from_amax(amax, fp8_max(self.dtype_for(role)), epsilon=recipe.amax_epsilon,
                               power_2=recipe.use_power_2_scales)


class DelayedScalingState(SiteScaling):
    """DelayedScaling metadata of one GemmSite: forward (input, weight) and backward (grad_output)."""

    recipe: DelayedScaling

    def __init__(self, recipe: DelayedScaling, device: torch.device) -> None:
        super().__init__(recipe, device)
        self.forward = ScalingMeta(recipe.amax_history_len, 2, device)  # columns: Role.INPUT, Role.WEIGHT
        self.backward = ScalingMeta(recipe.amax_history_len, 1, device)
        self.forward_updates = 0

    def weight_epoch(self) -> int:
        """The forward scales' update count: a new scale (and an emptied amax slot) after each update."""
        return self.forward_updates

    def scale_for_amax(self, role: Role, amax: torch.Tensor) -> torch.Tensor:
        """The scale stored at the last update; `amax` goes into the running step's slot."""
        meta, column = (self.backward, 0) if role is Role.GRAD_OUTPUT else (self.forward, role.value)
        meta.record(column, amax)
        return meta.scale[column].clone()  # a copy: the update must not change what this GEMM used

    def forward_done(self) -> None:
        """Join the enclosing autocast's update at its outermost exit."""
        _register_for_forward_update(self)

    def backward_done(self) -> None:
        """Update the grad_output scale once the whole backward pass has finished, as TE does."""
        # If this site ran twice in the pass, the second callback finds row 0 empty: a no-op.
        torch.autograd.Variable._execution_engine.queue_callback(self.update_backward)

    def update_forward(self) -> None:
        """Roll the input/weight amax histories and recompute their scales (TE: at autocast exit)."""
        self.forward.update(self.recipe.fp8_format.max_fwd, self.recipe)
        self.forward_updates += 1

    def update_backward(self) -> None:
        """Roll the grad_output amax history and recompute its scale (TE: after backward)."""
        self.backward.update(self.recipe.fp8_format.max_bwd, self.recipe)


def site_scaling(current: SiteScaling | None, recipe: DelayedScaling | Float8CurrentScaling,
                 device: torch.device) -> SiteScaling:
    """`current` if it serves `recipe` on `device`, else fresh state (a changed recipe resets it)."""
    if current is not None and current.matches(recipe, device):
        return current
    if isinstance(recipe, DelayedScaling):
        return DelayedScalingState(recipe, device)
    return CurrentScalingState(recipe, device)


# --- the FP8 GEMM --------------------------------------------------------------------------------


@functools.cache
def has_fp8_matmul(device: torch.device) -> bool:
    """Whether to run FP8 GEMMs through torch._scaled_mm here: CUDA GPUs of SM 8.9 and newer.

    Below SM 8.9 (e.g. A100) _scaled_mm refuses FP8 operands. On the CPU it runs, but as a reference
    kernel (~13 ms for a 64x96 GEMM, some 1000x slower than the same product in fp32); products of FP8
    values are exact in fp32 and both accumulate in fp32, so the fp32 path gives the same result
    (tests/test_fp8.py checks the two agree).
    """
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _scaled_mm(a: torch.Tensor, b: torch.Tensor, a_scale_inv: torch.Tensor, b_scale_inv: torch.Tensor,
               out_dtype: torch.dtype, fast_accum: bool) -> torch.Tensor:
    """a @ b on FP8 operands with per-tensor scale_invs; a row-major and b column-major, as CUDA needs."""
    if not has_fp8_matmul(a.device):
        # No (fast) FP8 GEMM here: products of FP8 values (4-bit mantissas) are exact in fp32 and TF32,
        # so multiplying the raw values and scaling afterwards is what _scaled_mm computes.
        return ((a.float() @ b.float()) * (a_scale_inv * b_scale_inv)).to(out_dtype)
    # The CPU kernel accepts any layout, cuBLASLt does not; make every call valid on both.
    return torch._scaled_mm(a.contiguous(), b.t().contiguous().t(), scale_a=a_scale_inv, scale_b=b_scale_inv,
                            out_dtype=out_dtype, use_fast_accum=fast_accum)


class _Fp8Linear(torch.autograd.Function):
    """y = x @ w.T with FP8 x, w (forward) and FP8 dy (backward); outputs and grads in high precision."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor, weight: torch.Tensor, scaling: SiteScaling,  # type: ignore[override]
                source: torch.Tensor, source_amax: torch.Tensor) -> torch.Tensor:
        # `source` is what the input's FP8 copy is cast from: `inp` itself, or the fp32 value a fused
        # TE kernel had before rounding to `inp` (teswap.precision.fused); gradients go to `inp`.
        fwd_dtype = scaling.dtype_for(Role.INPUT)
        x_scale = scaling.scale_for_amax(Role.INPUT, source_amax)
        x_fp8, x_inv = quantize(source, x_scale, fwd_dtype), x_scale.reciprocal()
        w_fp8, w_inv = scaling.quantized_weight(weight)  # rows padded to 16, cached while the weight stands
        # TE runs fprop without the split accumulator (fast accumulation), dgrad and wgrad with it.
        out = _scaled_mm(x_fp8, w_fp8.t(), x_inv, w_inv, inp.dtype, fast_accum=True)
        needs_dgrad, needs_wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Keep only the FP8 copies backward will use, as TE does (no high-precision activations).
        ctx.save_for_backward(x_fp8 if needs_wgrad else None, x_inv, w_fp8 if needs_dgrad else None, w_inv)
        ctx.scaling, ctx.dtypes, ctx.out_rows = scaling, (inp.dtype, weight.dtype), weight.shape[0]
        scaling.forward_done()
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x_fp8, x_inv, w_fp8, w_inv = ctx.saved_tensors
        scaling: SiteScaling = ctx.scaling
        g_scale = scaling.scale_for(Role.GRAD_OUTPUT, grad_out)
        g_fp8, g_inv = quantize(grad_out, g_scale, scaling.dtype_for(Role.GRAD_OUTPUT)), g_scale.reciprocal()
        dgrad = wgrad = None
        if ctx.needs_input_grad[0]:  # dX = dY @ W
            dgrad = _scaled_mm(g_fp8, w_fp8, g_inv, w_inv, ctx.dtypes[0], fast_accum=False)
        if ctx.needs_input_grad[1]:  # dW = dY.T @ X, without the padded rows
            wgrad = _scaled_mm(g_fp8.t(), x_fp8, g_inv, x_inv, ctx.dtypes[1], fast_accum=False)[:ctx.out_rows]
        scaling.backward_done()
        return dgrad, wgrad, None, None, None


def check_fp8_dims(inp: torch.Tensor, weight: torch.Tensor, name: str = "gemm") -> None:
    """Raise TE's ValueError for FP8 shapes padding cannot fix: K % 16 (input, weight) or N % 8 (weight)."""
    k = inp.shape[-1]
    if k % 16:
        raise ValueError(f"FP8 execution requires the last dimension to be divisible by 16, but GEMM "
                         f"{name!r} got input with dims={list(inp.shape)} (last dim = {k}); use hidden and "
                         f"ffn sizes that are multiples of 16, or run without FP8")
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"GEMM {name!r}: weight dims={list(weight.shape)} do not match input last dim {k}")
    if weight.shape[0] % 8:
        raise ValueError(f"FP8 execution requires the product of all dimensions except the last to be "
                         f"divisible by 8, but GEMM {name!r} got weight with dims={list(weight.shape)} "
                         f"(product of leading dims = {weight.shape[0]})")


def _pad_rows(t: torch.Tensor) -> torch.Tensor:
    extra = -t.shape[0] % ROW_ALIGNMENT
    # Zero rows change neither amax nor the other rows' results; autograd drops their gradient.
    return F.pad(t, (0, 0, 0, extra)) if extra else t


def fp8_linear(inp: torch.Tensor, weight: torch.Tensor, scaling: SiteScaling, name: str = "gemm", *,
               source: torch.Tensor | None = None, source_amax: torch.Tensor | None = None) -> torch.Tensor:
    """y = inp @ weight.T as TE's FP8 GEMM under `scaling`; rows (and weight rows) padded to 16.

    The input's FP8 copy is cast from `source` (default `inp`) with a scale from `source_amax`
    (default amax of `source`): a fused TE kernel writes it from its fp32 result.
    """
    check_fp8_dims(inp, weight, name)
    rows, out_features = inp.numel() // inp.shape[-1], weight.shape[0]
    x = _pad_rows(inp.reshape(rows, inp.shape[-1]))
    x_source = x.detach() if source is None else _pad_rows(source.detach().reshape(rows, source.shape[-1]))
    amax = tensor_amax(x_source) if source_amax is None else source_amax
    # Weight rows are padded too: CUDA's _scaled_mm wants every dim divisible by 16, TE's rule only 8.
    out = _Fp8Linear.apply(x, weight, scaling, x_source, amax)
    return out[:rows, :out_features].reshape(*inp.shape[:-1], out_features)

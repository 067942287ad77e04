"""TE's block-scaled recipes emulated in pure PyTorch: Float8BlockScaling, MXFP8BlockScaling, NVFP4BlockScaling.

Every number here follows TE's own definitions, read from NVIDIA/TransformerEngine (v2.3 ... main d0067d0):
the reference quantizers tests/pytorch/references/{blockwise_quantizer_reference, quantize_scale_calc}.py,
transformer_engine/pytorch/experimental/quantization_microblock_ref.py (2.8; NVFP4, renamed
quantization_nvfp4.py in 2.9, custom_recipes/ from 2.12) and the kernels they describe
(common/recipe/recipe_common.cuh compute_scale_from_amax, common/util/ptx.cuh float_to_e8m0,
tests/cpp/test_common.h). The code is ours; tests/test_blockwise.py checks it against those definitions.

    recipe              block (values sharing a scale)           scale                     data
    Float8BlockScaling  1x128 (x, grad), 128x128 (weight)        fp32 (power of 2 unless   E4M3 (HYBRID: E5M2 grads)
                        (x/w/grad_block_scaling_dim 1 or 2)      use_f32_scales)
    MXFP8BlockScaling   1x32 along the GEMM's reduction dim      E8M0 (a power of 2)       E4M3 (HYBRID: E5M2 grads)
    NVFP4BlockScaling   1x16 (x, grad), 16x16 (weight)           E4M3 per block * fp32     E2M1
                                                                 per tensor

Blocks run along the reduction dim of the GEMM that reads them, so a tensor read by two GEMMs along
different dims is quantized twice from its high-precision value (TE's row-wise and column-wise copies):
y = x @ w.T reads x and w along K; dgrad dx = dy @ w reads dy along N and w along N (its column-wise
copy); wgrad dw = dy.T @ x reads dy and x along the tokens. Square (2D) blocks serve both directions.
NVFP4 applies its 16-point random Hadamard transform to the column-wise (wgrad) copies of inputs and
gradients (TE: "RHT is currently only applied to column-wise usage") and stochastic rounding to
gradients, where the recipe's QParams say so.

The GEMM: each operand's quantized values times its block scales is exact in fp32 wherever the scales
are powers of 2 (Float8BlockScaling's default, MXFP8 always, NVFP4's E4M3 x E2M1 products), so an fp32
GEMM of those values accumulates the products TE's GEMM does, in another order; NVFP4's per-tensor
decode scales multiply the output, as TE's GEMM alpha does. With use_f32_scales=True the dequantized
operand is rounded to fp32 once (<= 0.5 ulp of fp32 per element) where TE's GEMM scales per block.
Tensors are zero-padded to whole blocks (zeros change no block's amax) and cut back after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from teswap.precision.recipes import Float8BlockScaling, MXFP8BlockScaling, NVFP4BlockScaling, fp8_max

FP32_MAX = torch.finfo(torch.float32).max
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MX_BLOCK = 32
NVFP4_BLOCK = 16
FP8_BLOCK = 128
BlockRecipe = Float8BlockScaling | MXFP8BlockScaling | NVFP4BlockScaling
BLOCK_RECIPES = (Float8BlockScaling, MXFP8BlockScaling, NVFP4BlockScaling)


# --- fp32 scale math (TE's compute_scale_from_amax) ------------------------------------------------


def fp8_block_scale(amax: torch.Tensor, fp8_max_value: float, *, power_2: bool, epsilon: float = 0.0,
                    value_for_inf: float = FP32_MAX) -> torch.Tensor:
    """TE's compute_scale_from_amax per block: the correctly rounded fp32 quotient fp8_max / max(amax, eps);
    1.0 where amax is 0, inf or NaN; `value_for_inf` (the input dtype's max) where the quotient overflows;
    power_2: the fp32 mantissa cleared (rounded down to a power of 2)."""
    amax = amax.float()
    amax = torch.where(amax < epsilon, epsilon, amax)  # NaN < eps is False: NaN stays NaN, as in TE
    scale = torch.div(torch.full_like(amax, fp8_max_value), amax)
    scale = torch.where(torch.isinf(scale), value_for_inf, scale)
    if power_2:
        scale = (scale.view(torch.int32) & -(2**23)).view(torch.float32)
    usable = torch.isfinite(amax) & (amax != 0)
    return torch.where(usable, scale, torch.ones_like(scale))


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    extra_r, extra_c = -t.shape[0] % rows, -t.shape[1] % cols
    return F.pad(t, (0, extra_c, 0, extra_r)) if extra_r or extra_c else t


def _blocks(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A padded 2D tensor as [M/rows, rows, K/cols, cols]: block (i, j) is [i, :, j, :]."""
    m, k = t.shape
    return t.reshape(m // rows, rows, k // cols, cols)


def _block_amax(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """max |t| over each rows x cols block of a padded 2D tensor: [M/rows, K/cols]; NaNs skipped (fmaxf)."""
    amax = _blocks(t.detach().abs(), rows, cols).amax(dim=(1, 3)).float()
    if amax.isnan().any():  # amax propagates NaN; only then pay for a second pass
        amax = _blocks(t.detach().abs().nan_to_num(nan=0.0, posinf=math.inf), rows, cols).amax(dim=(1, 3)).float()
    return amax


def _scaled(t: torch.Tensor, per_block: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """t (padded 2D) times its block's factor, in fp32."""
    return (_blocks(t.float(), rows, cols) * per_block[:, None, :, None]).reshape(t.shape)


def _expand(per_block: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return per_block.repeat_interleave(rows, 0).repeat_interleave(cols, 1)


@dataclass(frozen=True)
class Quantized:
    """A 2D tensor quantized in blocks along its last dim (or in square blocks).

    data: the quantized values (FP8 dtype; E2M1 values held exactly in fp32), padded to whole blocks.
    scale_inv: per block, what data is multiplied by to dequantize (fp32; E8M0 and E4M3 scales decoded).
    tensor_scale_inv: NVFP4's per-tensor decode scale (1.0 otherwise), applied to the GEMM's output.
    shape: the unpadded shape.
    """

    data: torch.Tensor
    scale_inv: torch.Tensor
    block: tuple[int, int]
    tensor_scale_inv: torch.Tensor
    shape: tuple[int, int]

    def values(self) -> torch.Tensor:
        """data * block scale_inv in fp32, unpadded (without the per-tensor factor)."""
        rows, cols = self.block
        if self.data.shape[0] == self.scale_inv.shape[0] * rows:
            full = _scaled(self.data, self.scale_inv, rows, cols)
        else:  # a transposed view: blocks of (cols, rows) over the transposed data
            full = _scaled(self.data.t(), self.scale_inv.t(), cols, rows).t()
        return full[: self.shape[0], : self.shape[1]]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The high-precision value this quantized tensor stands for."""
        return (self.values() * self.tensor_scale_inv).to(dtype)


# --- Float8BlockScaling ----------------------------------------------------------------------------


def quantize_fp8_block(x: torch.Tensor, fp8_dtype: torch.dtype, block: tuple[int, int], *, power_2: bool,
                       epsilon: float = 0.0) -> Quantized:
    """x (2D) in 1x128 or 128x128 blocks, one fp32 scale each, as TE's blockwise quantizer writes it.

    value_for_inf is the input dtype's max (TE: TypeInfo<IType>::max_finite_value)."""
    rows, cols = block
    padded = _pad_to(x.detach(), rows, cols)
    amax = _block_amax(padded, rows, cols)
    value_for_inf = float(torch.finfo(x.dtype).max) if x.dtype.is_floating_point else FP32_MAX
    scale = fp8_block_scale(amax, fp8_max(fp8_dtype), power_2=power_2, epsilon=epsilon, value_for_inf=value_for_inf)
    limit = fp8_max(fp8_dtype)
    data = _scaled(padded, scale, rows, cols).clamp_(-limit, limit).to(fp8_dtype)
    one = torch.ones((), device=x.device)
    return Quantized(data, scale.reciprocal(), block, one, (x.shape[0], x.shape[1]))


# --- MXFP8BlockScaling -----------------------------------------------------------------------------


def float_to_e8m0(value: torch.Tensor) -> torch.Tensor:
    """TE's float_to_e8m0 (cvt.rp.satfinite.ue8m0x2.f32): the biased exponent of `value` rounded UP to a
    power of 2, saturating at 254; NaN -> 255, inf -> 254, 0 -> 0; subnormals up to 2**-127 -> 0. int32."""
    value = value.float()
    bits = value.view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    round_up = (mantissa > 0) & (exponent != 0xFE) & ~((exponent == 0) & (mantissa <= 0x400000))
    exponent = exponent + round_up.to(torch.int32)
    exponent = torch.where(value == 0, 0, exponent)
    exponent = torch.where(torch.isinf(value), 0xFE, exponent)
    return torch.where(torch.isnan(value), 0xFF, exponent)


def e8m0_scale_inv(biased: torch.Tensor) -> torch.Tensor:
    """2**(biased - 127), the factor an E8M0 scale dequantizes with (255: NaN)."""
    out = torch.ldexp(torch.ones_like(biased, dtype=torch.float32), (biased - 127).to(torch.int32))
    return torch.where(biased == 0xFF, math.nan, out)


def e8m0_scale(biased: torch.Tensor) -> torch.Tensor:
    """TE's exp2f_rcp: 2**(127 - biased), what values are multiplied by before the FP8 cast (254: 2**-127)."""
    out = torch.ldexp(torch.ones_like(biased, dtype=torch.float32), (127 - biased).to(torch.int32))
    return torch.where(biased == 0xFF, math.nan, out)


def quantize_mxfp8(x: torch.Tensor, fp8_dtype: torch.dtype) -> tuple[Quantized, torch.Tensor]:
    """x (2D) in 1x32 blocks along its last dim: (quantized, the E8M0 biased exponents [M, K/32]).

    TE's rule: e = float_to_e8m0(block_amax * fp32(1 / fp8_max)), values cast as fp8(x * 2**(127 - e))."""
    padded = _pad_to(x.detach(), 1, MX_BLOCK)
    amax = _block_amax(padded, 1, MX_BLOCK)
    max_norm_rcp = torch.tensor(1.0 / fp8_max(fp8_dtype), dtype=torch.float32, device=x.device)  # fp32(1/max)
    biased = float_to_e8m0(amax * max_norm_rcp)
    limit = fp8_max(fp8_dtype)
    data = _scaled(padded, e8m0_scale(biased), 1, MX_BLOCK).clamp_(-limit, limit).to(fp8_dtype)
    one = torch.ones((), device=x.device)
    return Quantized(data, e8m0_scale_inv(biased), (1, MX_BLOCK), one, (x.shape[0], x.shape[1])), biased


# --- NVFP4BlockScaling -----------------------------------------------------------------------------

# TE's fixed sign vector for its 16-point random Hadamard transform (get_wgrad_sign_vector), as data.
RHT_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def round_to_e2m1(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (already scaled into [-6, 6]) rounded to E2M1 values (in fp32): to nearest, ties to even;
    with `generator`, stochastically (up with probability equal to the distance from the value below).

    E2M1's magnitudes are spaced 0.5 below 2, 1 in [2, 4) and 2 in [4, 6]; on each spacing an even
    multiple has an even mantissa, so torch.round (half to even) of x / spacing is TE's tie rule.
    """
    magnitude = x.float().abs().clamp(max=E2M1_MAX)
    step = torch.where(magnitude < 2.0, 0.5, torch.where(magnitude < 4.0, 1.0, 2.0))
    if generator is None:
        rounded = torch.round(magnitude / step) * step
    else:
        low = torch.floor(magnitude / step) * step
        draw = torch.rand(magnitude.shape, generator=generator, device=x.device, dtype=torch.float32)
        rounded = torch.where(draw < (magnitude - low) / step, low + step, low)
    return torch.copysign(rounded, x.float())


def hadamard_16(device: torch.device | str = "cpu") -> torch.Tensor:
    """TE's RHT matrix: diag(signs) @ Sylvester H16, times 1/4 (orthonormal)."""
    h = torch.ones((1, 1), dtype=torch.float32, device=device)
    while h.shape[0] < NVFP4_BLOCK:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    signs = torch.tensor(RHT_SIGNS, dtype=torch.float32, device=device)
    return (signs[:, None] * h) * 0.25


def apply_rht(x: torch.Tensor) -> torch.Tensor:
    """The 16-point transform along x's last dim, in blocks of 16, in fp32 (TE's x_blocks @ H)."""
    padded = _pad_to(x.float(), 1, NVFP4_BLOCK)
    out = (padded.reshape(-1, NVFP4_BLOCK) @ hadamard_16(x.device)).reshape(padded.shape)
    return out[:, : x.shape[1]]


def nvfp4_global_encode_scale(global_amax: torch.Tensor) -> torch.Tensor:
    """448 * 6 / amax (correctly rounded fp32), at most fp32 max; 1.0 where that is 0 (amax inf) or amax 0."""
    amax = global_amax.float()
    scale = torch.div(torch.full_like(amax, E4M3_MAX * E2M1_MAX), amax).clamp(max=FP32_MAX)
    return torch.where((scale == 0) | (amax == 0) | torch.isnan(scale), torch.ones_like(scale), scale)


def quantize_nvfp4(x: torch.Tensor, block: tuple[int, int], *, generator: torch.Generator | None = None,
                   global_amax: torch.Tensor | None = None) -> Quantized:
    """x (2D) in 1x16 or 16x16 blocks: E2M1 values, E4M3 block decode scales, an fp32 per-tensor scale.

    TE's reference (NVFP4QuantizerRef._quantize_blockwise_reference): S_enc = 448*6 / global amax;
    block decode = e4m3(min((block_amax / 6) * S_enc, 448)); values = e2m1(clamp(x / (decode / S_enc), 6))."""
    rows, cols = block
    padded = _pad_to(x.detach().float(), rows, cols)
    amax = _block_amax(padded, rows, cols)
    if global_amax is None:
        global_amax = amax.amax()  # the tensor's amax is its largest block amax
    encode = nvfp4_global_encode_scale(global_amax)
    global_decode = torch.div(torch.ones_like(encode), encode)
    decode = torch.div(amax, torch.full_like(amax, E2M1_MAX)) * encode
    decode = decode.clamp(max=FP32_MAX).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
    block_encode = torch.div(torch.ones_like(decode), decode * global_decode).clamp(max=FP32_MAX)
    scaled = _scaled(padded, block_encode, rows, cols).clamp_(-E2M1_MAX, E2M1_MAX)
    data = round_to_e2m1(scaled, generator=generator)
    return Quantized(data, decode, block, global_decode, (x.shape[0], x.shape[1]))


# --- one operand of one GEMM, per recipe -----------------------------------------------------------


class Usage:
    """Which tensor an operand is (input, weight, grad) and whether it is TE's column-wise copy."""

    INPUT, WEIGHT, GRAD = "input", "weight", "grad"


def quantize_operand(recipe: BlockRecipe, t: torch.Tensor, role: str, *, columnwise: bool,
                     generator: torch.Generator | None = None) -> Quantized:
    """`t` (2D, blocks along its last dim: the caller hands the transpose for a column-wise copy) as
    `recipe` quantizes a tensor of `role` for one GEMM."""
    if isinstance(recipe, Float8BlockScaling):
        spec = recipe.fp8_format.value
        dtype = spec.backward if role == Usage.GRAD else spec.forward
        dim = {Usage.INPUT: recipe.x_block_scaling_dim, Usage.WEIGHT: recipe.w_block_scaling_dim,
               Usage.GRAD: recipe.grad_block_scaling_dim}[role]
        block = (FP8_BLOCK, FP8_BLOCK) if dim == 2 else (1, FP8_BLOCK)
        return quantize_fp8_block(t, dtype, block, power_2=not recipe.use_f32_scales)
    if isinstance(recipe, MXFP8BlockScaling):
        spec = recipe.fp8_format.value
        return quantize_mxfp8(t, spec.backward if role == Usage.GRAD else spec.forward)[0]
    two_d = role == Usage.WEIGHT and not recipe.disable_2d_quantization
    rht = columnwise and role != Usage.WEIGHT and not recipe.disable_rht
    sr = role == Usage.GRAD and not recipe.disable_stochastic_rounding
    source = apply_rht(t) if rht else t
    block = (NVFP4_BLOCK, NVFP4_BLOCK) if two_d else (1, NVFP4_BLOCK)
    return quantize_nvfp4(source, block, generator=generator if sr else None)


def square_blocks(recipe: BlockRecipe, role: str) -> bool:
    """Whether `role`'s blocks are square, so one quantized copy serves both GEMM directions."""
    if isinstance(recipe, Float8BlockScaling):
        dims = {Usage.INPUT: recipe.x_block_scaling_dim, Usage.WEIGHT: recipe.w_block_scaling_dim,
                Usage.GRAD: recipe.grad_block_scaling_dim}
        return dims[role] == 2
    if isinstance(recipe, NVFP4BlockScaling):
        return role == Usage.WEIGHT and not recipe.disable_2d_quantization
    return False


def _transposed(q: Quantized) -> Quantized:
    return Quantized(q.data.t(), q.scale_inv.t(), (q.block[1], q.block[0]), q.tensor_scale_inv,
                     (q.shape[1], q.shape[0]))


def _gemm(a: Quantized, b: Quantized, out_dtype: torch.dtype) -> torch.Tensor:
    """a @ b.T (both quantized along the reduction dim) in fp32, per-tensor factors on the output."""
    out = a.values() @ b.values().t()
    return (out * (a.tensor_scale_inv * b.tensor_scale_inv)).to(out_dtype)


# --- per-GemmSite state and the GEMM ---------------------------------------------------------------


class BlockScaling:
    """How one GemmSite quantizes under a block-scaled recipe (stateless but for the weight cache and
    NVFP4's seeded stochastic-rounding stream)."""

    def __init__(self, recipe: BlockRecipe, device: torch.device) -> None:
        self.recipe = recipe
        self.device = device
        self._weights: tuple[torch.Tensor, tuple, Quantized, Quantized | None] | None = None
        self.generator: torch.Generator | None = None
        if isinstance(recipe, NVFP4BlockScaling):
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(recipe.stochastic_rounding_seed)

    def matches(self, recipe: object, device: torch.device) -> bool:
        """True when this state can serve `recipe` on `device`."""
        return self.recipe == recipe and self.device == device

    def weight_copies(self, weight: torch.Tensor, *, columnwise: bool) -> tuple[Quantized, Quantized | None]:
        """(row-wise copy for fprop, column-wise copy for dgrad), cached while the weight stands."""
        key = (weight._version, tuple(weight.shape), weight.dtype, columnwise)
        cached = self._weights
        if cached is not None and cached[0] is weight and cached[1] == key:
            return cached[2], cached[3]
        w = weight.detach()
        rowwise = quantize_operand(self.recipe, w, Usage.WEIGHT, columnwise=False)
        col = None
        if columnwise:
            col = (_transposed(rowwise) if square_blocks(self.recipe, Usage.WEIGHT)
                   else quantize_operand(self.recipe, w.t(), Usage.WEIGHT, columnwise=True))
        self._weights = (weight, key, rowwise, col)
        return rowwise, col


class _BlockLinear(torch.autograd.Function):
    """y = x @ w.T with every operand of fprop, dgrad and wgrad quantized along that GEMM's reduction dim."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                scaling: BlockScaling) -> torch.Tensor:
        recipe = scaling.recipe
        needs_dgrad, needs_wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x = inp.detach()
        x_row = quantize_operand(recipe, x, Usage.INPUT, columnwise=False)
        w_row, w_col = scaling.weight_copies(weight, columnwise=needs_dgrad)
        out = _gemm(x_row, w_row, inp.dtype)
        x_col = None
        if needs_wgrad:  # TE writes the column-wise copy from the high-precision input, in forward
            x_col = (_transposed(x_row) if square_blocks(recipe, Usage.INPUT)
                     else quantize_operand(recipe, x.t(), Usage.INPUT, columnwise=True))
        ctx.copies = (x_col, w_col)
        ctx.scaling, ctx.dtypes = scaling, (inp.dtype, weight.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x_col, w_col = ctx.copies
        scaling: BlockScaling = ctx.scaling
        recipe, generator = scaling.recipe, scaling.generator
        g = grad_out.detach()
        dgrad = wgrad = None
        if ctx.needs_input_grad[0]:  # dX = dY @ W: both along N
            g_row = quantize_operand(recipe, g, Usage.GRAD, columnwise=False, generator=generator)
            dgrad = _gemm(g_row, w_col, ctx.dtypes[0])
        if ctx.needs_input_grad[1]:  # dW = dY.T @ X: both along the tokens
            if square_blocks(recipe, Usage.GRAD) and ctx.needs_input_grad[0]:
                g_col = _transposed(g_row)
            else:
                g_col = quantize_operand(recipe, g.t(), Usage.GRAD, columnwise=True, generator=generator)
            wgrad = _gemm(g_col, x_col, ctx.dtypes[1])
        ctx.copies = None
        return dgrad, wgrad, None


def block_linear(inp: torch.Tensor, weight: torch.Tensor, scaling: BlockScaling, name: str = "gemm") -> torch.Tensor:
    """y = inp @ weight.T as TE's GEMM under a block-scaled recipe (shapes checked as TE checks them)."""
    from teswap.precision.emulation import check_fp8_dims

    check_fp8_dims(inp, weight, name)
    rows = inp.numel() // inp.shape[-1]
    out = _BlockLinear.apply(inp.reshape(rows, inp.shape[-1]), weight, scaling)
    return out.reshape(*inp.shape[:-1], weight.shape[0])

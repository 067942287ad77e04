"""The block-scaled recipes (teswap.precision.blockwise) against TE's own definitions, bit for bit.

The expected values come from definitions written here, independently of the code under test and the
way TE's pure-PyTorch references and kernels state them (read at NVIDIA/TransformerEngine v2.3 ... main):
- tests/pytorch/references/quantize_scale_calc.py scale_from_amax_tensor (fp8_max / amax with torch.div,
  power of 2 through frexp/ldexp) and common/recipe/recipe_common.cuh compute_scale_from_amax (inf/NaN/0
  amax -> 1, an overflowing quotient -> the input dtype's max);
- tests/pytorch/references/blockwise_quantizer_reference.py (1x128 and 128x128 tiles, zero padding);
- tests/cpp/test_common.h float_to_e8m0 / exp2f_rcp and tests/cpp/operator/test_cast_mxfp8.cu (MXFP8);
- transformer_engine/pytorch/experimental/quantization_microblock_ref.py (2.8; NVFP4QuantizerRef; later
  quantization_nvfp4.py, custom_recipes/) and common/cast/nvfp4/core_nvfp4.cuh (the global scale).
"""

from __future__ import annotations

import math
import struct

import pytest
import torch

from teswap.precision import blockwise as bw
from teswap.precision.emulation import fp8_autocast, scale_from_amax
from teswap.precision.gemm import GemmSite
from teswap.precision.recipes import Float8BlockScaling, Format, MXFP8BlockScaling, NVFP4BlockScaling

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def f32(value: float) -> float:
    """value rounded to the nearest fp32 (Python floats are doubles)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def correctly_rounded(numerator: float, amax: torch.Tensor) -> torch.Tensor:
    """fp32(numerator / amax), via a double quotient: 53 >= 2 * 24 + 2 bits, so rounding twice is exact."""
    return (torch.tensor(numerator, dtype=torch.float64) / amax.double()).float()


def random_amaxes(count: int = 20000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    exponents = torch.randint(-60, 60, (count,), generator=generator).double()
    return (torch.rand(count, generator=generator, dtype=torch.float64) + 0.5).mul(2.0**exponents).float()


# --- the scale TE computes: the correctly rounded fp32 quotient --------------------------------------


@pytest.mark.parametrize("numerator", [448.0, 57344.0, 448.0 * 2**-3])
def test_every_fp8_scale_is_the_correctly_rounded_quotient(numerator):
    amax = random_amaxes()
    expected = correctly_rounded(numerator, amax)
    margin = 3 if numerator == 448.0 * 2**-3 else 0
    fp8_max = numerator * 2**margin
    assert torch.equal(scale_from_amax(amax, fp8_max, margin=margin), expected)  # per-tensor recipes
    assert torch.equal(bw.fp8_block_scale(amax, fp8_max * 2**-margin, power_2=False), expected)  # per block
    # A Python float over a tensor is reciprocal times numerator: a quarter of these would be 1 ulp off.
    assert ((fp8_max * 2**-margin) / amax != expected).float().mean() > 0.1


def test_nvfp4_global_scale_is_the_correctly_rounded_quotient_and_te_kernel_edges():
    amax = random_amaxes()
    assert torch.equal(bw.nvfp4_global_encode_scale(amax), correctly_rounded(448.0 * 6.0, amax))
    edges = torch.tensor([0.0, math.inf, 1e-45])
    # core_nvfp4.cuh: amax 0 or inf -> 1; a quotient past fp32 -> fp32 max
    assert bw.nvfp4_global_encode_scale(edges).tolist() == [1.0, 1.0, torch.finfo(torch.float32).max]


# --- Float8BlockScaling ----------------------------------------------------------------------------


def ref_block_scale(amax: float, fp8_max: float, pow_2: bool, x_dtype_max: float) -> float:
    """TE's scale for one block, in Python: quantize_scale_calc.py plus compute_scale_from_amax's edges."""
    if math.isnan(amax) or math.isinf(amax) or amax == 0.0:
        return 1.0
    quotient = fp8_max / amax
    scale = x_dtype_max if quotient >= 2.0**128 else f32(quotient)  # past fp32: the quotient is inf
    if pow_2:
        _, exponent = math.frexp(scale)  # mantissa in [0.5, 1): the power of 2 below is 2**(exponent - 1)
        scale = math.ldexp(1.0, exponent - 1)
    return scale


def ref_quantize_blocks(x: torch.Tensor, tile: tuple[int, int], fp8_dtype: torch.dtype, pow_2: bool):
    """blockwise_quantizer_reference.py's tiling, a block at a time: (fp8 data, scale_inv per block)."""
    rows, cols = tile
    m, k = x.shape
    fp8_max = float(torch.finfo(fp8_dtype).max)
    data = torch.empty(m, k, dtype=fp8_dtype)
    scale_inv = torch.empty(-(-m // rows), -(-k // cols))
    for bi in range(scale_inv.shape[0]):
        for bj in range(scale_inv.shape[1]):
            block = x[bi * rows:(bi + 1) * rows, bj * cols:(bj + 1) * cols].float()
            amax = block.abs().max().item()
            scale = ref_block_scale(amax, fp8_max, pow_2, float(torch.finfo(x.dtype).max))
            data[bi * rows:(bi + 1) * rows, bj * cols:(bj + 1) * cols] = (
                (block * scale).clamp(-fp8_max, fp8_max).to(fp8_dtype))
            scale_inv[bi, bj] = 1.0 / torch.tensor(scale, dtype=torch.float32)
    return data, scale_inv


def awkward_tensor(m: int, k: int, seed: int = 0) -> torch.Tensor:
    """bf16 values over many magnitudes, with a zero block, an all-equal block and a huge outlier."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=generator) * torch.exp2(torch.randint(-20, 20, (m, 1), generator=generator))
    x[:3, :128] = 0.0  # a zero tile / rows of one
    x[5, :] = 0.375  # an all-equal row (all-equal 1x128 tiles)
    x[7, 3] = 3.0e38  # a quotient that rounds to a tiny scale; and the 128x128 block holding it
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("tile", [(1, 128), (128, 128)])
@pytest.mark.parametrize("pow_2", [True, False])
@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_fp8_block_quantization_matches_te_reference_bit_for_bit(tile, pow_2, fp8_dtype):
    x = awkward_tensor(136, 200)  # neither dim a multiple of 128: partial tiles, zero-padded as TE's reference
    q = bw.quantize_fp8_block(x, fp8_dtype, tile, power_2=pow_2)
    data, scale_inv = ref_quantize_blocks(x, tile, fp8_dtype, pow_2)
    assert torch.equal(q.data[:136, :200].view(torch.uint8), data.view(torch.uint8))
    assert torch.equal(q.scale_inv, scale_inv)
    if pow_2:  # power-of-2 scales: dequantization is exact
        assert torch.equal(q.dequantize(), data.float() * bw._expand(scale_inv, *tile)[:136, :200])


def test_fp8_block_scale_edges_follow_te_kernel():
    amax = torch.tensor([0.0, math.inf, math.nan, 1e-40, 448.0, 448.0 * 3])
    bf16_max = float(torch.finfo(torch.bfloat16).max)
    got = bw.fp8_block_scale(amax, 448.0, power_2=False, value_for_inf=bf16_max)
    expected = [ref_block_scale(a, 448.0, False, bf16_max) for a in amax.tolist()]
    assert got.tolist() == [f32(e) for e in expected]
    assert got[3].item() == pytest.approx(bf16_max, rel=1e-6)  # 448 / 1e-40 overflows fp32: the input dtype's max
    pow2 = bw.fp8_block_scale(amax, 448.0, power_2=True)
    assert pow2.tolist()[:3] == [1.0, 1.0, 1.0] and pow2[5].item() == 0.25  # 1/3 rounded down to 2**-2


# --- MXFP8 ---------------------------------------------------------------------------------------


def ref_float_to_e8m0(value: float) -> int:
    """tests/cpp/test_common.h float_to_e8m0, on the fp32 bit pattern."""
    if math.isnan(value):
        return 0xFF
    if math.isinf(value):
        return 0xFE
    if value == 0.0:
        return 0
    bits = f32_bits(value)
    exponent, mantissa = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if mantissa > 0 and exponent != 0xFE and not (exponent == 0 and mantissa <= 0x400000):
        exponent += 1
    return exponent


def test_e8m0_rounds_the_exponent_up_with_te_subnormal_and_saturation_rules():
    specials = [0.0, 2.0**-149, 2.0**-128, 2.0**-127, 2.0**-127 + 2.0**-149, 2.0**-126, 1.0, 1.0000001,
                1.5, 2.0**127, 3.0e38, math.inf, math.nan, 448.0 / 448.0, 6.0e-5]
    values = torch.tensor(specials + random_amaxes(2000).tolist(), dtype=torch.float32)
    expected = torch.tensor([ref_float_to_e8m0(v) for v in values.tolist()], dtype=torch.int32)
    assert torch.equal(bw.float_to_e8m0(values), expected)
    # exp2f_rcp: 2**(127 - e), 254 -> 2**-127 (a subnormal), 255 -> NaN
    biased = torch.tensor([0, 1, 127, 200, 254, 255])
    scale = bw.e8m0_scale(biased)
    assert scale[:5].tolist() == [2.0**127, 2.0**126, 1.0, 2.0**-73, 2.0**-127] and math.isnan(scale[5])


def ref_mxfp8(x: torch.Tensor, fp8_dtype: torch.dtype):
    """test_cast_mxfp8.cu's row-wise reference: per 1x32 block, e = float_to_e8m0(amax * fp32(1/max))."""
    m, k = x.shape
    rcp = f32(1.0 / float(torch.finfo(fp8_dtype).max))
    data = torch.empty(m, k, dtype=fp8_dtype)
    exps = torch.empty(m, k // 32, dtype=torch.int32)
    for i in range(m):
        for b in range(k // 32):
            block = x[i, b * 32:(b + 1) * 32].float()
            e = ref_float_to_e8m0(f32(block.abs().max().item() * rcp))
            exps[i, b] = e
            scale_reciprocal = torch.tensor(math.ldexp(1.0, 127 - e), dtype=torch.float32)
            data[i, b * 32:(b + 1) * 32] = (block * scale_reciprocal).to(fp8_dtype)
    return data, exps


@pytest.mark.parametrize("fp8_dtype", [E4M3, E5M2])
def test_mxfp8_quantization_matches_te_reference_bit_for_bit(fp8_dtype):
    x = awkward_tensor(12, 256, seed=3)
    x[9, 64:96] = 2.0**-130  # a block whose scale is a subnormal E8M0 (2**-127: e = 0)
    q, exps = bw.quantize_mxfp8(x, fp8_dtype)
    data, ref_exps = ref_mxfp8(x, fp8_dtype)
    assert torch.equal(exps, ref_exps) and exps[9, 2] == 0 and exps[0, 0] == 0
    assert torch.equal(q.data.view(torch.uint8), data.view(torch.uint8))
    assert torch.equal(q.dequantize(), data.float() * torch.exp2(ref_exps.float() - 127).repeat_interleave(32, 1))


# --- NVFP4 ---------------------------------------------------------------------------------------


def ref_e2m1(v: float) -> float:
    """quantization_microblock_ref.py cast_to_fp4x2's intervals (nearest, ties to even), as values."""
    a = abs(v)
    for upper, value, closed in ((0.25, 0.0, True), (0.75, 0.5, False), (1.25, 1.0, True), (1.75, 1.5, False),
                                 (2.5, 2.0, True), (3.5, 3.0, False), (5.0, 4.0, True)):
        if a < upper or (closed and a == upper):
            return math.copysign(value, v)
    return math.copysign(6.0, v)


def test_e2m1_rounding_is_te_nearest_ties_to_even():
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -5.0]
    values = torch.tensor(ties + torch.linspace(-6, 6, 2001).tolist())
    got = bw.round_to_e2m1(values)
    assert got.tolist() == [ref_e2m1(v) for v in values.tolist()]


def ref_nvfp4(x: torch.Tensor, tile: tuple[int, int]):
    """NVFP4QuantizerRef._quantize_blockwise_reference, a block at a time: (e2m1 values, e4m3 decode scales)."""
    rows, cols = tile
    xf = x.float()
    m, k = xf.shape
    global_amax = xf.abs().max()
    encode = torch.tensor(448.0 * 6.0) / global_amax  # torch.div of two tensors: correctly rounded
    encode = torch.tensor(1.0) if global_amax == 0 else encode.clamp(max=torch.finfo(torch.float32).max)
    decode_global = torch.tensor(1.0) / encode
    values, scales = torch.empty(m, k), torch.empty(m // rows, k // cols)
    for bi in range(m // rows):
        for bj in range(k // cols):
            block = xf[bi * rows:(bi + 1) * rows, bj * cols:(bj + 1) * cols]
            decode = (block.abs().max() / torch.tensor(6.0)) * encode
            decode = decode.clamp(-448, 448).to(E4M3).float()
            block_encode = (torch.tensor(1.0) / (decode * decode_global)).clamp(max=torch.finfo(torch.float32).max)
            scaled = (block * block_encode).clamp(-6, 6)
            values[bi * rows:(bi + 1) * rows, bj * cols:(bj + 1) * cols] = torch.tensor(
                [ref_e2m1(v) for v in scaled.flatten().tolist()]).reshape(scaled.shape)
            scales[bi, bj] = decode
    return values, scales, decode_global


@pytest.mark.parametrize("tile", [(1, 16), (16, 16)])
def test_nvfp4_quantization_matches_te_reference_bit_for_bit(tile):
    x = awkward_tensor(32, 64, seed=7).float().clamp(-1e4, 1e4).to(torch.bfloat16)
    x[20:22, 16:32] = 0.0
    q = bw.quantize_nvfp4(x, tile)
    values, scales, decode_global = ref_nvfp4(x, tile)
    assert torch.equal(q.data, values) and torch.equal(q.scale_inv, scales)
    assert torch.equal(q.tensor_scale_inv, decode_global)
    assert set(q.data.abs().unique().tolist()) <= set(bw.E2M1_VALUES)


def test_random_hadamard_transform_is_te_signed_sylvester_matrix_and_orthonormal():
    h = bw.hadamard_16()
    assert torch.allclose(h @ h.t(), torch.eye(16), atol=1e-6)
    sylvester = torch.tensor([[(-1) ** bin(i & j).count("1") for j in range(16)] for i in range(16)],
                             dtype=torch.float32)
    signs = torch.tensor([1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1], dtype=torch.float32)
    assert torch.equal(h, torch.diag(signs) @ sylvester / 4)
    x = torch.randn(3, 32)
    assert torch.allclose(bw.apply_rht(x), (x.reshape(-1, 16) @ h).reshape(3, 32))


def test_stochastic_rounding_is_seeded_unbiased_and_picks_a_neighbour():
    values = torch.full((20000,), 2.6)
    first = bw.round_to_e2m1(values, generator=torch.Generator().manual_seed(1))
    again = bw.round_to_e2m1(values, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and set(first.unique().tolist()) == {2.0, 3.0}
    assert first.mean().item() == pytest.approx(2.6, abs=0.02)  # nearest rounding would give 3.0 every time


# --- the GEMMs: orientation of every operand -------------------------------------------------------


def test_block_gemms_quantize_each_operand_along_its_reduction_dim():
    """fprop reads x and w along K, dgrad dy and w along N, wgrad dy and x along the tokens (MXFP8: 1x32)."""
    torch.manual_seed(0)
    x = (torch.randn(64, 96) * torch.exp2(torch.randint(-8, 8, (64, 96)).float())).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(64, 96) * torch.exp2(torch.randint(-8, 8, (64, 96)).float())).to(torch.bfloat16).requires_grad_()
    dy = (torch.randn(64, 64) * torch.exp2(torch.randint(-8, 8, (64, 64)).float())).to(torch.bfloat16)
    with fp8_autocast(MXFP8BlockScaling(fp8_format=Format.HYBRID)):
        y = GemmSite("fc1")(x, w)
    y.backward(dy)

    def dq(t, dtype=E4M3):
        return bw.quantize_mxfp8(t, dtype)[0].dequantize()

    assert torch.equal(y, (dq(x) @ dq(w).t()).to(torch.bfloat16))
    assert torch.equal(x.grad, (dq(dy, E5M2) @ dq(w.t()).t()).to(torch.bfloat16))
    assert torch.equal(w.grad, (dq(dy.t(), E5M2) @ dq(x.t()).t()).to(torch.bfloat16))


def test_nvfp4_wgrad_uses_hadamard_copies_and_the_rest_as_the_recipe_says():
    torch.manual_seed(1)
    x = torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(48, 64, dtype=torch.bfloat16, requires_grad=True)
    recipe = NVFP4BlockScaling(disable_rht=False, disable_stochastic_rounding=True, disable_2d_quantization=False)
    with fp8_autocast(recipe):
        y = GemmSite("fc1")(x, w)
    dy = torch.randn(32, 48, dtype=torch.bfloat16)
    y.backward(dy)
    def gemm(a, b):  # E2M1 x E4M3 block values (exact in fp32) multiplied, the tensor scales on the output
        return ((a.values() @ b.values().t()) * (a.tensor_scale_inv * b.tensor_scale_inv)).to(torch.bfloat16)

    w_q = bw.quantize_nvfp4(w, (16, 16))  # 16x16 blocks: one copy serves fprop and (transposed) dgrad
    w_t = bw.Quantized(w_q.data.t(), w_q.scale_inv.t(), (16, 16), w_q.tensor_scale_inv, (64, 48))
    assert torch.equal(y, gemm(bw.quantize_nvfp4(x, (1, 16)), w_q))
    assert torch.equal(x.grad, gemm(bw.quantize_nvfp4(dy, (1, 16)), w_t))
    g_t = bw.quantize_nvfp4(bw.apply_rht(dy.t()), (1, 16))
    x_t = bw.quantize_nvfp4(bw.apply_rht(x.t()), (1, 16))
    assert torch.equal(w.grad, gemm(g_t, x_t))
    # the transform cancels in dY.T @ X: the product is close to the unquantized one
    exact = dy.float().t() @ x.float()
    assert ((w.grad.float() - exact).norm() / exact.norm()).item() < 0.3


def test_float8_block_recipe_rejects_what_te_rejects():
    with pytest.raises(ValueError, match="2D by 2D"):
        Float8BlockScaling(x_block_scaling_dim=2)
    with pytest.raises(ValueError, match="E5M2"):
        MXFP8BlockScaling(fp8_format=Format.E5M2)

"""The torch twin's fused casts follow TE's kernels, per recipe, against a direct fp32 reference.

TE's RMSNorm and SwiGLU kernels compute in fp32 and write the next GEMM's input themselves
(teswap.precision.fused has the table): no FP8 -> one rounding to bf16; DelayedScaling -> FP8 straight
from fp32 with the amax of the fp32 value; Float8CurrentScaling -> FP8 from the bf16 output, the
norm's scale from the bf16 amax, SwiGLU's from the fp32 amax. Each test rebuilds the GEMM's FP8 input
from a plain fp32 computation of the same recipe and asks for the same bits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from teswap.layers.fused_kernels import swiglu
from teswap.layers.torch_modules import LayerNormLinear, LayerNormMLP
from teswap.precision import emulation
from teswap.precision.emulation import fp8_autocast, quantize, scale_from_amax
from teswap.precision.recipes import DelayedScaling, Float8CurrentScaling

BF16, E4M3 = torch.bfloat16, torch.float8_e4m3fn
HIDDEN, FFN, EPS = 64, 64, 1e-5


def randn(*shape: int, seed: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def rms_norm_fp32(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * gamma.float()


def swiglu_fp32(h: torch.Tensor) -> torch.Tensor:
    a, b = h.float().chunk(2, dim=-1)
    return F.silu(a) * b


def amax(t: torch.Tensor) -> torch.Tensor:
    return t.detach().abs().amax().float()


@pytest.fixture
def quantized(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(source, scale, fp8) of every FP8 cast the emulation makes, in order."""
    calls = []

    def spy(x, scale, dtype):
        out = quantize(x, scale, dtype)
        calls.append((x.detach().clone(), scale.clone(), out))
        return out

    monkeypatch.setattr(emulation, "quantize", spy)
    return calls


def norm_linear() -> LayerNormLinear:
    torch.manual_seed(0)
    module = LayerNormLinear(HIDDEN, {"query": 64, "key": 32, "value": 32}, eps=EPS, fused=True,
                             zero_centered_gamma=False, gemm_name="qkv").to(BF16)
    with torch.no_grad():
        module.layer_norm_weight.uniform_(0.5, 1.5)
    return module


def norm_mlp() -> LayerNormMLP:
    torch.manual_seed(1)
    module = LayerNormMLP(HIDDEN, FFN, eps=EPS, zero_centered_gamma=False).to(BF16)
    with torch.no_grad():
        module.layer_norm_weight.uniform_(0.5, 1.5)
        module.fc1_weight.mul_(8.0)  # fc1 outputs of order 1, so SwiGLU's product is not tiny
    return module


def fc1_output_of(module: LayerNormMLP, monkeypatch) -> list[torch.Tensor]:
    """Record what the fc1 GEMM returns (the bf16 tensor TE's gated kernel reads)."""
    outputs, fc1 = [], module.fc1
    monkeypatch.setattr(module, "fc1", lambda inp, weight: outputs.append(fc1(inp, weight)) or outputs[-1])
    return outputs


# --- no FP8: one rounding ----------------------------------------------------------------------------


def test_swiglu_rounds_once_from_fp32():
    h = randn(32, 2 * FFN, seed=2, std=3.0).to(BF16)
    out = swiglu(h).rounded
    reference = swiglu_fp32(h).to(BF16)
    assert out.dtype == BF16 and torch.equal(out, reference)
    a, b = h.chunk(2, dim=-1)
    assert not torch.equal(reference, F.silu(a) * b)  # rounding silu to bf16 first gives other bits


def test_swiglu_backward_is_tes_dswiglu_rounded_once():
    h = randn(16, 2 * FFN, seed=3, std=3.0).to(BF16).requires_grad_()
    g = randn(16, FFN, seed=4).to(BF16)
    swiglu(h).rounded.backward(g)
    a, b = h.detach().float().chunk(2, dim=-1)
    s = torch.sigmoid(a)
    reference = torch.cat([(a * s * (1 - s) + s) * g.float() * b, g.float() * (a * s)], dim=-1).to(BF16)
    assert torch.equal(h.grad, reference)
    double = randn(4, 16, seed=5).double().requires_grad_()  # fp64: the analytic gradient, checked numerically
    assert torch.autograd.gradcheck(lambda t: swiglu(t).rounded, (double,))


def test_mlp_without_fp8_feeds_fc2_the_once_rounded_product(monkeypatch):
    module, x = norm_mlp(), randn(2, 8, HIDDEN, seed=6).to(BF16)
    fc1_outputs = fc1_output_of(module, monkeypatch)
    with torch.no_grad():
        y = module(x)
        expected = F.linear(swiglu_fp32(fc1_outputs[0]).to(BF16), module.fc2_weight)
    assert torch.equal(y, expected)


# --- DelayedScaling: FP8 straight from fp32, amax of the fp32 value ---------------------------------


def test_delayed_scaling_norm_casts_from_fp32_with_the_fp32_amax(quantized):
    module, x = norm_linear(), randn(2, 16, HIDDEN, seed=7).to(BF16)
    y32 = rms_norm_fp32(x, module.layer_norm_weight).reshape(32, HIDDEN)
    assert amax(y32) != amax(y32.to(BF16))  # the data tells the two amaxes apart
    with fp8_autocast(DelayedScaling()):  # grad enabled: scales update at exit from this step's amaxes
        module(x)
    state = module.gemm.fp8_scaling
    assert state.forward.amax_history[-1, 0] == amax(y32)
    assert state.forward.scale[0] == scale_from_amax(amax(y32), 448.0)
    quantized.clear()
    with torch.no_grad(), fp8_autocast(DelayedScaling()):
        out = module(x)
    source, scale, fp8 = quantized[0]
    assert source.dtype == torch.float32 and torch.equal(source, y32)
    assert torch.equal(fp8.view(torch.uint8), quantize(y32, state.forward.scale[0], E4M3).view(torch.uint8))
    assert not torch.equal(fp8.view(torch.uint8), quantize(y32.to(BF16), scale, E4M3).view(torch.uint8))
    w_source, w_scale, w_fp8 = quantized[1]
    reference = (fp8.float() / scale) @ (w_fp8.float() / w_scale).T
    torch.testing.assert_close(out.reshape(32, -1), reference.to(BF16), rtol=2**-8, atol=0)


def test_delayed_scaling_swiglu_casts_the_fp32_product(quantized, monkeypatch):
    module, x = norm_mlp(), randn(2, 16, HIDDEN, seed=8).to(BF16)
    fc1_outputs = fc1_output_of(module, monkeypatch)
    with torch.no_grad(), fp8_autocast(DelayedScaling()):  # no_grad: no update, row 0 keeps this step's amaxes
        module(x)
    p32 = swiglu_fp32(fc1_outputs[0]).reshape(32, FFN)
    assert amax(p32) != amax(p32.to(BF16))
    source, scale, _ = quantized[2]  # fc1 input, fc1 weight, fc2 input, fc2 weight
    assert source.dtype == torch.float32 and torch.equal(source, p32)
    assert module.fc2.fp8_scaling.forward.amax_history[0, 0] == amax(p32)


# --- Float8CurrentScaling: FP8 from bf16; norm amax of bf16, SwiGLU amax of fp32 ---------------------


def test_current_scaling_norm_casts_bf16_with_the_bf16_amax(quantized):
    module, x = norm_linear(), randn(2, 16, HIDDEN, seed=7).to(BF16)
    with torch.no_grad(), fp8_autocast(Float8CurrentScaling()):
        module(x)
    y16 = rms_norm_fp32(x, module.layer_norm_weight).to(BF16).reshape(32, HIDDEN)
    source, scale, fp8 = quantized[0]
    assert source.dtype == BF16 and torch.equal(source, y16)
    assert scale == scale_from_amax(amax(y16), 448.0)
    assert torch.equal(fp8.view(torch.uint8), quantize(y16, scale, E4M3).view(torch.uint8))


def test_current_scaling_swiglu_scale_comes_from_the_fp32_amax(quantized, monkeypatch):
    module, x = norm_mlp(), randn(2, 16, HIDDEN, seed=8).to(BF16)
    fc1_outputs = fc1_output_of(module, monkeypatch)
    with torch.no_grad(), fp8_autocast(Float8CurrentScaling()):
        module(x)
    p32 = swiglu_fp32(fc1_outputs[0]).reshape(32, FFN)
    assert amax(p32) != amax(p32.to(BF16))
    source, scale, fp8 = quantized[2]
    assert source.dtype == BF16 and torch.equal(source, p32.to(BF16))
    assert scale == scale_from_amax(amax(p32), 448.0) != scale_from_amax(amax(p32.to(BF16)), 448.0)
    assert torch.equal(fp8.view(torch.uint8), quantize(p32.to(BF16), scale, E4M3).view(torch.uint8))


def test_plain_gemm_inputs_are_cast_as_given(quantized):
    """The attention output (proj) and stock linears: no fused kernel, the tensor and its own amax."""
    from teswap.precision.gemm import GemmSite

    x, w = randn(16, 32, seed=9).to(BF16), randn(16, 32, seed=10, std=0.1).to(BF16)
    with torch.no_grad(), fp8_autocast(DelayedScaling()):
        GemmSite("proj")(x, w)
    source, _, _ = quantized[0]
    assert source.dtype == BF16 and torch.equal(source, x)


def test_swiglu_in_row_blocks_gives_the_same_bits(monkeypatch):
    """The fp32 temporaries are made a block of rows at a time; the blocks change no bit."""
    from teswap.layers import fused_kernels

    h = randn(2, 9, 2 * FFN, seed=11, std=3.0).to(BF16)
    g = randn(2, 9, FFN, seed=12).to(BF16)
    results = []
    for chunk in (1 << 24, 3 * 2 * FFN):  # one block; blocks of 3 rows (the last one short)
        monkeypatch.setattr(fused_kernels, "_CHUNK_ELEMENTS", chunk)
        leaf = h.clone().requires_grad_()
        with fp8_autocast(Float8CurrentScaling()):
            out = swiglu(leaf)
        out.rounded.backward(g)
        results.append((out.rounded, out.exact_amax, leaf.grad))
    for whole, blocked in zip(*results, strict=True):
        assert torch.equal(whole, blocked)
    assert results[0][1] == amax(swiglu_fp32(h))

"""teswap's recipe emulation against an independent implementation: torchao 0.18 (REFERENCE §14).

torchao is a test-only dependency in its own group (`torchao` in pyproject's dependency-groups) and runs
in its own nox session (`nox -s torchao`), never in the main test environment: transformers imports
torchao when it is installed, which would change what the rest of the suite runs. Without torchao
every test here skips, saying so. The library never imports torchao.

What is compared, and which rule each side follows:
- torchao `tensorwise` Float8 training (emulate=True) is TE's Float8CurrentScaling: E4M3 forward, E5M2
  grad_output, all three GEMMs in FP8. With power-of-2 scales on both sides the stock HF model through
  our emulation and through torchao agree bit for bit (logits, loss, every gradient). Without them,
  each GEMM differs by rounding only: torchao dequantizes each operand (fp8 / scale, one rounding per
  element) before an fp32 matmul, TE multiplies the FP8 product by both inverse scales after.
- torchao's MX formats with ScaleCalculationMode.RCEIL are the rule TE's MXFP8 kernels use (cuBLAS's
  "ceil of amax / max_pos to a power of 2", cvt.rp.satfinite.ue8m0x2.f32). TE multiplies amax by
  fp32(1/448) where torchao divides by 448; at the edges (amax = 448 * 2**k and its fp32 neighbours) the
  two still agree, as asserted. They differ on blocks whose E8M0 is 0: torchao scales their values by
  1.0 where TE uses 2**127.
- torchao's NVFP4 two-level quantization (nvfp4_quantize with a per-tensor scale) is NVIDIA's rule as
  well but in another rounding order: block scale (amax / 6) / (tensor amax / 2688) there, (amax / 6) *
  (2688 / tensor amax) in TE; they could round a block scale apart (on the data here none did), and
  E2M1 values are compared where block scales agree. torchao floors amax at 1e-12 and block scales
  at E4M3's smallest subnormal, TE at 0: the data here has no such blocks.
"""

from __future__ import annotations

import copy

import pytest
import torch

torchao = pytest.importorskip("torchao", reason="torchao is a separate test group: run `nox -s torchao`")

from transformers import LlamaForCausalLM  # noqa: E402

from support import llama, random_ids  # noqa: E402
from teswap.precision import blockwise as bw  # noqa: E402
from teswap.precision import recipes  # noqa: E402
from teswap.precision.stock import stock_autocast  # noqa: E402


def _torchao_float8(model: torch.nn.Module, power_2: bool) -> torch.nn.Module:
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig(emulate=True, round_scales_to_power_of_2=power_2)
    return convert_to_float8_training(model, config=config, module_filter_fn=lambda mod, fqn: ".layers." in f".{fqn}")


def _pair(dtype: torch.dtype, power_2: bool, monkeypatch):
    torch.manual_seed(0)
    ours = LlamaForCausalLM(llama()).to(dtype)
    theirs = _torchao_float8(copy.deepcopy(ours), power_2)
    recipe = recipes.Float8CurrentScaling(use_power_2_scales=power_2)
    monkeypatch.setitem(recipes.RECIPES, "fp8-current", lambda: recipe)
    return ours, theirs


def _run(model, ids, context=None):
    model.zero_grad(set_to_none=True)
    if context is None:
        out = model(ids, labels=ids)
    else:
        with context():
            out = model(ids, labels=ids)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torchao_tensorwise_equals_our_fp8_current_bit_for_bit_with_power_of_2_scales(dtype, monkeypatch):
    ours, theirs = _pair(dtype, True, monkeypatch)
    ids = random_ids(256, seq=32)
    logits, loss, grads = _run(ours, ids, stock_autocast(ours, "fp8-current"))
    t_logits, t_loss, t_grads = _run(theirs, ids)
    assert torch.equal(logits, t_logits) and torch.equal(loss, t_loss)
    assert grads.keys() == t_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], t_grads[name]), name
    plain, _, _ = _run(ours, ids)
    assert not torch.equal(plain, logits)  # both really quantized


def test_without_power_of_2_scales_the_difference_is_rounding_of_the_dequantization_only(monkeypatch):
    """One fp32 GEMM: ~1 ulp per output where torchao rounds each dequantized operand; far below FP8's error."""
    ours, theirs = _pair(torch.float32, False, monkeypatch)
    ids = random_ids(256, seq=32)
    logits, _, _ = _run(ours, ids, stock_autocast(ours, "fp8-current"))
    t_logits, _, _ = _run(theirs, ids)
    plain, _, _ = _run(ours, ids)
    quantization = (logits - plain).norm() / plain.norm()  # what FP8 itself changes: ~1e-2
    disagreement = (logits - t_logits).norm() / plain.norm()
    assert 0 < disagreement < 1e-5 < quantization  # measured 2.7e-7 vs 4.1e-2 on this model


# --- MXFP8 vs torchao MX (RCEIL) -------------------------------------------------------------------


def _torchao_mx(x: torch.Tensor, dtype: torch.dtype):
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    scale, data = to_mx(x, dtype, 32, ScaleCalculationMode.RCEIL)
    return scale.view(torch.uint8).to(torch.int32), data


@pytest.mark.parametrize("fp8_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_mxfp8_equals_torchao_rceil_on_ordinary_blocks(fp8_dtype):
    generator = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 256, generator=generator)
         * torch.exp2(torch.randint(-30, 30, (64, 8), generator=generator).float()).repeat_interleave(32, 1))
    x = x.to(torch.bfloat16)
    ours, exps = bw.quantize_mxfp8(x, fp8_dtype)
    t_exps, t_data = _torchao_mx(x, fp8_dtype)
    assert torch.equal(exps, t_exps)
    assert torch.equal(ours.data.view(torch.uint8), t_data.view(torch.uint8))


def test_mxfp8_and_torchao_rceil_at_the_edges_te_defines():
    """Near amax = 448 * 2**k, TE's amax * fp32(1/448) and torchao's amax / 448 could round to different
    sides of 2**k: they do not (fp32(1/448) is 0.65 ulp from 1/448). A block whose E8M0 is 0 (amax <=
    448 * 2**-127) is where they differ: TE scales its values by 2**127, torchao by 1.0 (so flushes them)."""
    edge = torch.tensor(448.0 * 2.0**-3)
    amaxes = torch.stack([torch.nextafter(edge, torch.tensor(0.0)), edge, torch.nextafter(edge, torch.tensor(1e3))])
    x = torch.zeros(4, 32)
    x[:3, 0] = amaxes
    x[3, 0] = 2.0**-120  # E8M0 = 0 (2**-127): TE's values are 2**-120 * 2**127 = 128
    ours, exps = bw.quantize_mxfp8(x, torch.float8_e4m3fn)
    t_exps, t_data = _torchao_mx(x, torch.float8_e4m3fn)
    assert torch.equal(exps, t_exps) and exps[:3, 0].tolist() == [124, 124, 125] and exps[3, 0] == 0
    assert torch.equal(ours.data[:3].view(torch.uint8), t_data[:3].view(torch.uint8))
    assert ours.data[3, 0].float() == 128.0 and t_data[3, 0].float() == 0.0


# --- NVFP4 vs torchao NVFP4 ------------------------------------------------------------------------


def test_nvfp4_agrees_with_torchao_where_both_rounding_orders_give_the_same_block_scale():
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4
    from torchao.prototype.mx_formats.nvfp4_tensor import nvfp4_quantize, per_tensor_amax_to_scale

    generator = torch.Generator().manual_seed(4)
    x = (torch.randn(64, 256, generator=generator)
         * torch.exp2(torch.randint(-6, 6, (64, 16), generator=generator).float()).repeat_interleave(16, 1))
    ours = bw.quantize_nvfp4(x, (1, 16))
    t_scales, t_packed = nvfp4_quantize(x, 16, per_tensor_amax_to_scale(x.abs().amax()))
    t_values = f4_unpacked_to_f32(unpack_uint4(t_packed.view(torch.uint8))).reshape(64, 256)
    t_scales = t_scales.float().reshape(64, 16)
    same_scale = ours.scale_inv == t_scales
    assert same_scale.float().mean() > 0.99  # measured 1.0 here; the two rounding orders may split a tie
    rows = same_scale.repeat_interleave(16, 1)
    agree = (ours.data == t_values)[rows].float().mean()
    assert agree > 0.999  # measured 1.0

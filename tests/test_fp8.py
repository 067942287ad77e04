"""FP8 recipe emulation: TE's quantization, scale updates, FP8 GEMMs and autocast, in pure PyTorch."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading

import pytest
import torch

from support import rel_max_err
from teswap.layers.torch_layer import TransformerLayer
from teswap.precision import emulation
from teswap.precision.emulation import (
    CurrentScalingState,
    DelayedScalingState,
    Role,
    active_recipe,
    dequantize,
    fp8_autocast,
    fp8_linear,
    quantize,
    scale_from_amax,
    tensor_amax,
)
from teswap.precision.gemm import GemmSite
from teswap.precision.recipes import RECIPES, DelayedScaling, Float8CurrentScaling, Format, fp8_max, unsupported_reason

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
CPU = torch.device("cpu")
# TE's own tolerances for FP8 tensors (tests/pytorch/utils.py dtype_tols).
E4M3_TOLS = dict(rtol=0.125, atol=0.0675)


def randn(*shape: int, seed: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


def with_amax(amax: float, cols: int = 16) -> torch.Tensor:
    """A [16, cols] tensor whose largest magnitude is exactly `amax`."""
    t = torch.linspace(-amax / 2, amax / 2, 16 * cols).reshape(16, cols)
    t[3, 5] = -amax
    return t


def amax_of(t: torch.Tensor) -> float:
    return float(t.detach().abs().max())


def fp8_reference(a: torch.Tensor, b: torch.Tensor, scales: tuple[float, float],
                  dtypes: tuple[torch.dtype, torch.dtype]) -> torch.Tensor:
    """a @ b computed from the dequantized FP8 copies that TE's GEMM multiplies."""
    (sa, sb), (da, db) = [torch.tensor(s, dtype=torch.float32) for s in scales], dtypes
    return dequantize(quantize(a, sa, da), sa) @ dequantize(quantize(b, sb, db), sb)


# --- recipes -------------------------------------------------------------------------------------


def test_recipe_defaults_match_te():
    assert (Format.E4M3.max_fwd, Format.E5M2.max_bwd) == (448.0, 57344.0)
    assert (Format.HYBRID.max_fwd, Format.HYBRID.max_bwd) == (448.0, 57344.0)
    assert Format.HYBRID.value.forward is E4M3 and Format.HYBRID.value.backward is E5M2
    delayed = DelayedScaling()
    assert (delayed.margin, delayed.fp8_format, delayed.amax_history_len, delayed.amax_compute_algo) == (
        0, Format.HYBRID, 1024, "max")
    current = Float8CurrentScaling()
    assert (current.fp8_format, current.use_power_2_scales, current.amax_epsilon) == (Format.HYBRID, False, 0.0)


@pytest.mark.parametrize("make, match", [
    (lambda: DelayedScaling(fp8_format=Format.E5M2), "pure E5M2"),
    (lambda: Float8CurrentScaling(fp8_format=Format.E5M2), "pure E5M2"),
    (lambda: DelayedScaling(amax_history_len=0), "amax_history_len must be an int >= 1"),
    (lambda: DelayedScaling(amax_compute_algo="mean"), "amax_compute_algo must be one of"),
    (lambda: DelayedScaling(margin=-1), "margin must be an int >= 0"),
    (lambda: Float8CurrentScaling(amax_epsilon=-1e-3), "amax_epsilon must be a finite float >= 0"),
], ids=["delayed-e5m2", "current-e5m2", "history-0", "algo", "margin", "epsilon"])
def test_recipe_rejects_bad_fields(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_recipes_are_frozen_keyword_only_and_registered():
    with pytest.raises(TypeError):
        DelayedScaling(1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DelayedScaling().margin = 1  # type: ignore[misc]
    assert isinstance(RECIPES["fp8-delayed"](), DelayedScaling)
    assert isinstance(RECIPES["fp8-current"](), Float8CurrentScaling)
    assert unsupported_reason("fp8-delayed") is None and unsupported_reason("fp8-current") is None
    assert all(unsupported_reason(name) is None for name in ("fp8-block", "mxfp8", "nvfp4"))  # every recipe
    assert "unknown" in unsupported_reason("fp4")


# --- quantization and scale math -----------------------------------------------------------------


@pytest.mark.parametrize("dtype, precision, min_normal", [(E4M3, 2**-4, 2**-6), (E5M2, 2**-3, 2**-14)],
                         ids=["e4m3", "e5m2"])
def test_round_trip_error_is_the_formats_precision(dtype, precision, min_normal):
    g = torch.Generator().manual_seed(0)
    # Scaled magnitudes spread over the whole normal range, signs mixed; a non-unit scale.
    exponents = torch.empty(20000).uniform_(math.log2(min_normal), math.log2(fp8_max(dtype)), generator=g)
    signs = torch.randint(0, 2, (20000,), generator=g) * 2 - 1
    scale = torch.tensor(8.0)
    x = signs * torch.exp2(exponents) / scale
    back = dequantize(quantize(x, scale, dtype), scale)
    rel = (back - x).abs() / x.abs()
    assert rel.max() <= precision  # round-to-nearest with the format's mantissa bits
    assert rel.max() > 0.75 * precision  # and no finer: quantization really happened in this format


@pytest.mark.parametrize("dtype", [E4M3, E5M2], ids=["e4m3", "e5m2"])
def test_quantize_saturates_at_max_and_keeps_nan(dtype):
    top = fp8_max(dtype)
    x = torch.tensor([top * 1.5, -top * 10, math.inf, -math.inf, math.nan, top / 4])
    q = quantize(x, torch.tensor(2.0), dtype).float()
    assert q[:4].tolist() == [top, -top, top, -top]
    assert math.isnan(q[4]) and q[5] == top / 2  # top/4 * scale 2 is representable: no clamp


def test_scale_from_amax_follows_te():
    amax = torch.tensor([2.0, 0.0, math.inf, math.nan, 1e-45])
    assert scale_from_amax(amax, 448.0).tolist() == [224.0, 1.0, 1.0, 1.0, torch.finfo(torch.float32).max]
    old = torch.tensor([5.0, 6.0, 7.0, 8.0, 9.0])
    kept = scale_from_amax(amax, 448.0, margin=2, fallback=old)
    assert kept[:4].tolist() == [56.0, 6.0, 7.0, 8.0]
    assert scale_from_amax(torch.tensor(3.0), 448.0, power_2=True).item() == 128.0  # 149.3 rounded down
    assert scale_from_amax(torch.tensor(0.0), 448.0, epsilon=0.5).item() == 896.0


def test_amax_skips_nan_but_keeps_inf_like_te_kernels():
    assert tensor_amax(torch.tensor([1.0, math.nan, -3.0])).item() == 3.0  # fmaxf ignores NaN
    assert tensor_amax(torch.tensor([1.0, -math.inf]).bfloat16()).item() == math.inf
    state = DelayedScalingState(DelayedScaling(amax_history_len=2), CPU)
    state.scale_for(Role.INPUT, torch.tensor([[math.nan, 2.0]]))
    state.update_forward()
    assert state.forward.scale[0].item() == 224.0  # one NaN does not poison the history


def test_current_scaling_recipe_options_reach_the_scale():
    pow2 = CurrentScalingState(Float8CurrentScaling(use_power_2_scales=True), CPU)
    assert pow2.scale_for(Role.INPUT, with_amax(3.0)).item() == 128.0
    assert pow2.scale_for(Role.GRAD_OUTPUT, with_amax(3.0)).item() == 16384.0  # E5M2: 57344/3 -> 2**14
    eps = CurrentScalingState(Float8CurrentScaling(amax_epsilon=0.5), CPU)
    assert eps.scale_for(Role.WEIGHT, torch.zeros(16, 16)).item() == 896.0


# --- DelayedScaling history and updates ----------------------------------------------------------

# Amaxes of the input over six steps; None = the site did not run that step.
AMAXES = [2.0, 8.0, 1.0, 4.0, None, 2.0]
# Input column of the amax history [L=3] after each update (row 0 is cleared for the next step).
HISTORY = [[0, 0, 2], [0, 2, 8], [0, 8, 1], [0, 1, 4], [0, 1, 4], [0, 4, 2]]


@pytest.mark.parametrize("algo, margin, scales", [
    ("max", 0, [224, 56, 56, 56, 56, 112]),
    ("most_recent", 0, [224, 56, 448, 112, 112, 224]),
    ("max", 1, [112, 28, 28, 28, 28, 56]),
], ids=["max", "most-recent", "max-margin-1"])
def test_delayed_scaling_rolls_history_like_te(algo, margin, scales):
    state = DelayedScalingState(DelayedScaling(amax_history_len=3, amax_compute_algo=algo, margin=margin), CPU)
    used = []
    for amax, history, scale in zip(AMAXES, HISTORY, scales, strict=True):
        if amax is not None:
            used.append(state.scale_for(Role.INPUT, with_amax(amax)).item())
            state.scale_for(Role.WEIGHT, with_amax(0.5))
        state.update_forward()
        assert state.forward.amax_history[:, 0].tolist() == history
        assert state.forward.scale[0].item() == scale
    # Each step quantized with the scale of the update before it (1.0 at first).
    assert used == [1.0, *[scales[i] for i in (0, 1, 2, 4)]]
    assert state.forward.scale[1].item() == 448.0 / 0.5 / 2**margin  # weight column: its own amaxes


def test_delayed_scaling_history_of_length_one_keeps_only_the_last_amax():
    state = DelayedScalingState(DelayedScaling(amax_history_len=1), CPU)
    for amax, scale in [(4.0, 112.0), (1.0, 448.0)]:
        state.scale_for(Role.INPUT, with_amax(amax))
        state.update_forward()
        assert state.forward.scale[0].item() == scale and state.forward.amax_history.tolist() == [[0.0, 0.0]]


def test_forward_scales_update_at_outermost_exit_only_with_grad():
    site, recipe = GemmSite("qkv"), DelayedScaling(amax_history_len=4)
    with fp8_autocast(recipe):
        with fp8_autocast(recipe):
            site(with_amax(2.0), with_amax(0.5))
        assert site.fp8_scaling.forward.scale.tolist() == [1.0, 1.0]  # inner exit: no update
    assert site.fp8_scaling.forward.scale.tolist() == [224.0, 896.0]

    with torch.no_grad(), fp8_autocast(recipe):  # TE: no update when grad is off at exit
        site(with_amax(4.0), with_amax(0.5))
    assert site.fp8_scaling.forward.scale.tolist() == [224.0, 896.0]
    assert site.fp8_scaling.forward.amax_history[0].tolist() == [4.0, 0.5]  # still accumulating

    with torch.no_grad(), fp8_autocast(recipe, update_forward_scales=True):  # inference calibration
        site(with_amax(2.0), with_amax(0.5))
    assert site.fp8_scaling.forward.scale.tolist() == [112.0, 896.0]
    assert site.fp8_scaling.forward.amax_history[:, 0].tolist() == [0.0, 0.0, 2.0, 4.0]

    with fp8_autocast(recipe, update_forward_scales=False):
        site(with_amax(1.0), with_amax(0.5))
    assert site.fp8_scaling.forward.scale.tolist() == [112.0, 896.0]


def test_backward_scale_updates_once_after_the_whole_backward():
    site = GemmSite("proj")
    x1, x2 = randn(16, 32, seed=1).requires_grad_(), randn(16, 32, seed=2).requires_grad_()
    w = randn(16, 32, seed=3, std=0.1).requires_grad_()
    with fp8_autocast(DelayedScaling(amax_history_len=4)):
        y1, y2 = site(x1, w), site(x2, w)  # one site run twice: TE warns, but it must still work
    state = site.fp8_scaling
    assert state.backward.scale.item() == 1.0  # forward exit leaves backward scales alone
    (y1 * 3.0 + y2 * -5.0).sum().backward()
    # Both backward GEMMs quantized dY with the old scale; one update rolled in max(3, 5).
    assert state.backward.amax_history[:, 0].tolist() == [0.0, 0.0, 0.0, 5.0]
    assert state.backward.scale.item() == pytest.approx(57344.0 / 5.0, rel=1e-7)


def test_delayed_scaling_quantizes_with_the_stored_scales():
    site, recipe = GemmSite("fc2"), DelayedScaling()
    x, w = randn(32, 48, seed=4).requires_grad_(), randn(16, 48, seed=5, std=0.05).requires_grad_()
    dy = randn(32, 16, seed=6)
    with fp8_autocast(recipe):
        site(x * 2.0, w).backward(dy * 2.0)  # step 1 stores scales from these (larger) amaxes
    x.grad = w.grad = None
    state = site.fp8_scaling
    sx, sw = state.forward.scale.tolist()
    sg = state.backward.scale.item()
    assert (sx, sw) == (pytest.approx(448.0 / (2 * amax_of(x))), pytest.approx(448.0 / amax_of(w)))
    with fp8_autocast(recipe):
        y = site(x, w)
    y.backward(dy)
    torch.testing.assert_close(y, fp8_reference(x, w.T, (sx, sw), (E4M3, E4M3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, fp8_reference(dy, w, (sg, sw), (E5M2, E4M3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, fp8_reference(dy.T, x, (sg, sx), (E5M2, E4M3)), rtol=1e-5, atol=1e-4)


# --- FP8 GEMM numerics ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, grad_dtype", [(Format.HYBRID, E5M2), (Format.E4M3, E4M3)], ids=["hybrid", "e4m3"])
def test_current_scaling_quantizes_each_tensor_with_its_own_amax(fmt, grad_dtype):
    # Five decades between input and weight: one shared scale would flush or saturate one of them.
    x, w = randn(16, 32, seed=7, std=300.0).requires_grad_(), randn(24, 32, seed=8, std=1e-3).requires_grad_()
    dy = randn(16, 24, seed=9, std=1e-2)
    y = fp8_linear(x, w, CurrentScalingState(Float8CurrentScaling(fp8_format=fmt), CPU))
    y.backward(dy)
    sx, sw = 448.0 / amax_of(x), 448.0 / amax_of(w)
    sg = fp8_max(grad_dtype) / amax_of(dy)
    torch.testing.assert_close(y, fp8_reference(x, w.T, (sx, sw), (E4M3, E4M3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, fp8_reference(dy, w, (sg, sw), (grad_dtype, E4M3)), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(w.grad, fp8_reference(dy.T, x, (sg, sx), (grad_dtype, E4M3)), rtol=1e-5, atol=1e-5)
    assert rel_max_err(y.detach(), x.detach() @ w.detach().T) < 2**-4


@pytest.mark.parametrize("recipe", [DelayedScaling(), Float8CurrentScaling()], ids=["delayed", "current"])
def test_fp8_gemm_is_quantized_but_within_fp8_tolerance_of_fp32(recipe):
    site = GemmSite("fc1")
    x, w = randn(4, 8, 64, seed=10).requires_grad_(), randn(96, 64, seed=11, std=0.03).requires_grad_()
    dy = randn(4, 8, 96, seed=12)
    for _ in range(2):  # the first step calibrates DelayedScaling's scales
        x.grad = w.grad = None
        with fp8_autocast(recipe):
            y = site(x, w)
        y.backward(dy)
    y32 = x.detach() @ w.detach().T
    assert (y - y32).abs().max() > 0
    torch.testing.assert_close(y, y32, **E4M3_TOLS)
    grads32 = (dy @ w.detach(), dy.reshape(-1, 96).T @ x.detach().reshape(-1, 64))
    for grad, grad32 in zip((x.grad, w.grad), grads32, strict=True):
        err = rel_max_err(grad, grad32)
        assert 0 < err < 2**-3  # E5M2 gradients: quantized, yet within that format's precision


def test_gpus_without_fp8_gemm_get_the_same_product(monkeypatch):
    x, w = randn(16, 32, seed=22).requires_grad_(), randn(32, 32, seed=23, std=0.1).requires_grad_()
    dy = randn(16, 32, seed=24)
    scaling = CurrentScalingState(Float8CurrentScaling(), CPU)
    results = []
    for has_fp8 in (True, False):  # False: what a pre-Ada GPU (no FP8 GEMM) runs
        monkeypatch.setattr(emulation, "has_fp8_matmul", lambda device, has_fp8=has_fp8: has_fp8)
        x.grad = w.grad = None
        y = fp8_linear(x, w, scaling)
        y.backward(dy)
        results.append((y.detach(), x.grad, w.grad))
    for emulated, scaled_mm in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(emulated, scaled_mm, rtol=1e-5, atol=1e-5)
    assert rel_max_err(results[1][0], x.detach() @ w.detach().T) > 0  # still quantized


def test_bf16_operands_give_bf16_results():
    x, w = randn(16, 32, seed=13).bfloat16().requires_grad_(), randn(16, 32, seed=14).bfloat16().requires_grad_()
    y = fp8_linear(x, w, CurrentScalingState(Float8CurrentScaling(), CPU))
    y.sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == torch.bfloat16


# --- shapes --------------------------------------------------------------------------------------


def test_rows_are_padded_like_an_explicitly_padded_call(monkeypatch):
    calls = []
    real = torch._scaled_mm

    def spy(a, b, **kwargs):
        calls.append((a.shape, b.shape, a.is_contiguous(), b.t().is_contiguous()))
        return real(a, b, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    scaling = CurrentScalingState(Float8CurrentScaling(), CPU)
    x, w = randn(2, 5, 32, seed=15).requires_grad_(), randn(24, 32, seed=16, std=0.1).requires_grad_()
    dy = randn(2, 5, 24, seed=17)
    y = fp8_linear(x, w, scaling)  # 10 rows, 24 output features
    y.backward(dy)
    xp = torch.cat([x.detach().reshape(10, 32), torch.zeros(6, 32)]).requires_grad_()
    wp = w.detach().clone().requires_grad_()
    yp = fp8_linear(xp, wp, scaling)
    yp[:10].backward(dy.reshape(10, 24))
    assert y.shape == (2, 5, 24)
    assert torch.equal(y.reshape(10, 24), yp[:10])
    assert torch.equal(x.grad.reshape(10, 32), xp.grad[:10]) and torch.equal(w.grad, wp.grad)
    # What CUDA's _scaled_mm insists on and the CPU kernel does not check.
    for a_shape, b_shape, a_row_major, b_col_major in calls:
        assert all(d % 16 == 0 for d in (*a_shape, *b_shape)) and a_row_major and b_col_major


@pytest.mark.parametrize("x_shape, w_shape, match", [
    ((4, 40), (16, 40), "last dimension to be divisible by 16"),
    ((4, 32), (20, 32), "divisible by 8"),
], ids=["k-not-16", "n-not-8"])
def test_fp8_shape_rules_raise_value_error(x_shape, w_shape, match):
    site = GemmSite("fc2")
    with fp8_autocast(Float8CurrentScaling()), pytest.raises(ValueError, match=match) as info:
        site(torch.randn(x_shape), torch.randn(w_shape))
    assert "'fc2'" in str(info.value)


# --- autocast ------------------------------------------------------------------------------------


def test_autocast_nests_and_restores():
    outer, inner = DelayedScaling(), Float8CurrentScaling()
    assert active_recipe() is None
    with fp8_autocast(outer):
        assert active_recipe() is outer
        with fp8_autocast(inner):
            assert active_recipe() is inner
            with fp8_autocast(outer, enabled=False):
                assert active_recipe() is None
            assert active_recipe() is inner
        assert active_recipe() is outer
    assert active_recipe() is None
    with pytest.raises(RuntimeError, match="boom"), fp8_autocast(outer), fp8_autocast(inner):
        raise RuntimeError("boom")
    assert active_recipe() is None
    with pytest.raises(TypeError, match="needs one of teswap.s recipes"), fp8_autocast("fp8-delayed"):
        pass


def test_autocast_is_isolated_per_thread():
    main_recipe, worker_recipe = DelayedScaling(), Float8CurrentScaling()
    x, w = randn(16, 32, seed=18), randn(16, 32, seed=19)
    seen: dict[str, object] = {}
    worker_inside, main_checked = threading.Event(), threading.Event()

    def worker():
        seen["worker-before"] = active_recipe()
        seen["worker-gemm-plain"] = torch.equal(GemmSite("fc1")(x, w), torch.nn.functional.linear(x, w))
        with fp8_autocast(worker_recipe):
            seen["worker-inside"] = active_recipe()
            worker_inside.set()
            main_checked.wait(10)

    with fp8_autocast(main_recipe):
        thread = threading.Thread(target=worker)
        thread.start()
        worker_inside.wait(10)
        seen["main-while-worker-inside"] = active_recipe()
        main_checked.set()
        thread.join(10)
    assert seen == {"worker-before": None, "worker-gemm-plain": True, "worker-inside": worker_recipe,
                    "main-while-worker-inside": main_recipe}


def test_site_state_follows_the_recipe():
    site, x, w = GemmSite("fc1"), with_amax(2.0, cols=32), randn(16, 32, seed=20)
    with fp8_autocast(DelayedScaling(amax_history_len=4)):
        site(x, w)
    first = site.fp8_scaling
    with fp8_autocast(DelayedScaling(amax_history_len=4)):  # an equal recipe keeps the history
        site(x, w)
    assert site.fp8_scaling is first and first.forward.amax_history[:, 0].tolist() == [0, 0, 2, 2]
    with fp8_autocast(DelayedScaling(amax_history_len=8)):
        site(x, w)
    assert site.fp8_scaling is not first and site.fp8_scaling.forward.amax_history.shape == (8, 2)
    with fp8_autocast(Float8CurrentScaling()):
        site(x, w)
    assert isinstance(site.fp8_scaling, CurrentScalingState)


# --- a whole TE-layout layer ---------------------------------------------------------------------


def make_layer() -> TransformerLayer:
    torch.manual_seed(0)
    return TransformerLayer(hidden_size=128, ffn_hidden_size=256, num_attention_heads=4, num_gqa_groups=2,
                            kv_channels=32, layernorm_epsilon=1e-5, layer_number=1)


def rotary_freqs(seq: int, dim: int = 32) -> torch.Tensor:
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    return torch.cat([freqs, freqs], dim=-1).reshape(seq, 1, 1, dim)


def test_te_layer_under_fp8_is_less_precise_than_bf16_yet_close():
    layer, freqs = make_layer(), rotary_freqs(10)
    # A small residual input, so the output is mostly the GEMM branches FP8 acts on (RMSNorm rescales).
    x = randn(2, 10, 128, seed=21, std=0.05)  # 20 rows: padded to 32 in every FP8 GEMM
    with torch.no_grad():
        y32 = layer(x, freqs)
        y_bf16 = copy.deepcopy(layer).to(torch.bfloat16)(x.bfloat16(), freqs).float()
    with fp8_autocast(DelayedScaling()):  # a training-mode step calibrates the delayed scales
        layer(x.clone().requires_grad_(), freqs).sum().backward()
    layer.eval()
    with torch.no_grad(), fp8_autocast(DelayedScaling()):  # FP8 stays on in inference
        y8 = layer(x, freqs)
    err_fp8, err_bf16 = rel_max_err(y8, y32), rel_max_err(y_bf16, y32)
    assert err_fp8 > 2 * err_bf16
    assert err_fp8 < 0.1
    with torch.no_grad():
        assert torch.equal(layer(x, freqs), y32)  # outside the autocast: the plain fp32 layer again

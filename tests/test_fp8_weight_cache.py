"""The FP8 copy of a weight is made once per weight version and scale, as TE keeps its weight workspace."""

from __future__ import annotations

import torch

from teswap.precision import emulation
from teswap.precision.emulation import CurrentScalingState, DelayedScalingState, fp8_autocast, fp8_linear
from teswap.precision.recipes import DelayedScaling, Float8CurrentScaling

CPU = torch.device("cpu")


def _count_quantize(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    original = emulation.quantize

    def counting(x, scale, dtype):
        calls.append(tuple(x.shape))
        return original(x, scale, dtype)

    monkeypatch.setattr(emulation, "quantize", counting)
    return calls


def test_the_weight_is_quantized_once_while_it_is_unchanged(monkeypatch):
    calls = _count_quantize(monkeypatch)
    weight = torch.randn(32, 64)
    scaling = CurrentScalingState(Float8CurrentScaling(), CPU)
    first = fp8_linear(torch.randn(4, 64), weight, scaling)
    again = fp8_linear(torch.randn(4, 64), weight, scaling)
    assert calls.count((32, 64)) == 1  # the weight's FP8 copy was reused; each input was quantized
    assert first.shape == again.shape == (4, 32)
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place update (an optimizer step) bumps the version
    doubled = fp8_linear(torch.ones(4, 64), weight, scaling)
    assert calls.count((32, 64)) == 2
    reference = torch.ones(4, 64) @ weight.t()
    relative = ((doubled - reference).norm() / reference.norm()).item()
    assert relative < 0.1  # the new weight, to E4M3 precision (the stale one would be off by half)


def test_a_delayed_scaling_update_requantizes_with_the_new_scale(monkeypatch):
    calls = _count_quantize(monkeypatch)
    weight = torch.randn(32, 64) * 50
    scaling = DelayedScalingState(DelayedScaling(), CPU)
    with torch.no_grad(), fp8_autocast(DelayedScaling(), update_forward_scales=True):
        fp8_linear(torch.randn(16, 64), weight, scaling)
    assert scaling.forward_updates == 1 and calls.count((32, 64)) == 1
    old_scale = scaling._weight[3].clone()
    with torch.no_grad(), fp8_autocast(DelayedScaling(), update_forward_scales=False):
        fp8_linear(torch.randn(16, 64), weight, scaling)
    assert calls.count((32, 64)) == 2  # the scale moved from 1.0 to 448/amax: a new copy
    assert not torch.equal(scaling._weight[3], old_scale)
    assert scaling.forward.amax_history[0, 1] == weight.abs().max()  # and the amax was recorded again


def test_rows_padded_for_the_gemm_get_no_gradient():
    weight = torch.randn(24, 64, requires_grad=True)  # 24 rows: padded to 32 inside
    scaling = CurrentScalingState(Float8CurrentScaling(), CPU)
    out = fp8_linear(torch.randn(8, 64), weight, scaling)
    out.sum().backward()
    assert out.shape == (8, 24) and weight.grad.shape == (24, 64)

"""Metrics against answers worked out by hand: SQNR, KL, cosine, agreement, layer divergence, tokens."""

from __future__ import annotations

import math

import pytest
import torch

from teswap.parity.metrics import (
    GradKeysMismatchError,
    LayerError,
    MetricInputError,
    first_divergent_layer,
    grad_metrics,
    grad_summary,
    layer_errors,
    logits_metrics,
    loss_difference,
    token_match_rate,
    worst_grad,
)


def random_logits(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- logits -------------------------------------------------------------------------------------

def test_identical_logits_are_perfect():
    ref = random_logits(2, 8, 32)
    m = logits_metrics(ref.clone(), ref)
    assert (m.max_abs, m.mean_abs, m.robust_rel, m.kl_div) == (0.0, 0.0, 0.0, 0.0)
    assert m.cosine == 1.0 and m.sqnr_db == math.inf
    assert m.top1_agreement == 1.0 and m.top5_agreement == 1.0


def test_sqnr_of_noise_at_a_tenth_of_the_signal_norm_is_20_db():
    ref = random_logits(4, 64)
    noise = random_logits(4, 64, seed=1).double()
    noise *= 0.1 * ref.double().norm() / noise.double().norm()
    assert logits_metrics((ref.double() + noise).float(), ref).sqnr_db == pytest.approx(20.0, abs=1e-4)
    noise *= 10  # equal norms: 0 dB
    assert logits_metrics(ref.double() + noise, ref).sqnr_db == pytest.approx(0.0, abs=1e-9)


def test_kl_divergence_of_known_distributions_in_the_ref_to_test_direction():
    half = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    skewed = torch.log(torch.tensor([0.9, 0.1], dtype=torch.float64))
    kl_half_skewed = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL(ref=half || test=skewed)
    kl_skewed_half = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert logits_metrics(skewed, half).kl_div == pytest.approx(kl_half_skewed, rel=1e-12)
    assert logits_metrics(half, skewed).kl_div == pytest.approx(kl_skewed_half, rel=1e-12)
    # Mean over positions: one exact position, one off by kl_half_skewed.
    two = logits_metrics(torch.stack([half, skewed]), torch.stack([half, half]))
    assert two.kl_div == pytest.approx(kl_half_skewed / 2, rel=1e-12)


def test_kl_ignores_a_constant_shift_and_masked_vocab_entries():
    ref = random_logits(3, 16)
    ref[:, -2:] = -math.inf  # masked in both
    m = logits_metrics(ref + 7.0, ref)
    assert m.kl_div == pytest.approx(0.0, abs=1e-12)
    assert m.top1_agreement == 1.0


def test_cosine_of_orthogonal_opposite_and_scaled_vectors():
    ref = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert logits_metrics(torch.tensor([[0.0, 3.0, 0.0, 0.0]]), ref).cosine == pytest.approx(0.0, abs=1e-15)
    assert logits_metrics(-2 * ref, ref).cosine == pytest.approx(-1.0)
    assert logits_metrics(5 * ref, ref).cosine == pytest.approx(1.0)


def test_nan_in_test_logits_is_not_hidden_by_clamping():
    ref = random_logits(2, 8)
    test = ref.clone()
    test[0, 0] = math.nan
    m = logits_metrics(test, ref)
    assert math.isnan(m.cosine) and math.isnan(m.max_abs) and math.isnan(m.sqnr_db)


def test_top1_and_top5_agreement_after_swapping_logits():
    ref = torch.arange(40, dtype=torch.float32).reshape(4, 10)  # argmax 9, runner-up 8, lowest 0
    test = ref.clone()
    test[0, [9, 8]] = test[0, [8, 9]]  # row 0: test's top-1 is ref's 2nd: top-5 hit
    test[1, [9, 0]] = test[1, [0, 9]]  # row 1: test's top-1 is ref's last: top-5 miss
    m = logits_metrics(test, ref)
    assert m.top1_agreement == 0.5
    assert m.top5_agreement == 0.75


def test_max_mean_and_robust_relative_error_ignore_one_outlier_in_scale():
    ref = torch.arange(1, 1001, dtype=torch.float64)
    ref[-1] = 1e6  # one extreme logit must not set the scale: the 999th of 1000 magnitudes does
    test = ref.clone()
    test[10] += 0.5
    m = logits_metrics(test, ref)
    assert m.max_abs == 0.5
    assert m.mean_abs == pytest.approx(0.5 / 1000)
    assert m.robust_rel == pytest.approx(0.5 / 999)


def test_logits_of_different_shapes_are_refused_with_both_shapes_named():
    with pytest.raises(MetricInputError, match=r"\(2, 8\) vs ref \(2, 9\)"):
        logits_metrics(torch.zeros(2, 8), torch.zeros(2, 9))
    with pytest.raises(MetricInputError, match="non-empty"):
        logits_metrics(torch.zeros(0, 4), torch.zeros(0, 4))


def test_loss_difference_is_absolute():
    assert loss_difference(torch.tensor(2.5), 2.0) == 0.5
    assert loss_difference(2.0, torch.tensor(2.5)) == 0.5


# ---- gradients ----------------------------------------------------------------------------------

def test_grad_metrics_relative_norm_error_and_cosine():
    ref = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0, 0.0])}
    test = {"a": torch.tensor([3.0, 4.5]), "b": torch.tensor([0.0, 2.0])}
    metrics = grad_metrics(test, ref)
    assert metrics["a"].rel_norm_error == pytest.approx(0.1)  # ||(0, .5)|| / ||(3, 4)||
    assert metrics["a"].max_abs == 0.5
    assert metrics["b"].cosine == pytest.approx(0.0)
    assert metrics["b"].rel_norm_error == pytest.approx(math.sqrt(5))
    assert worst_grad(metrics).parameter == "b"
    assert grad_summary(metrics) == {"grad_rel_norm_error": pytest.approx(math.sqrt(5)),
                                     "grad_cosine": pytest.approx(0.0)}


def test_a_nan_gradient_is_the_worst():
    ref = {"a": torch.ones(3), "b": torch.ones(3)}
    test = {"a": torch.full((3,), 5.0), "b": torch.tensor([1.0, math.nan, 1.0])}
    assert worst_grad(grad_metrics(test, ref)).parameter == "b"
    assert math.isnan(grad_summary(grad_metrics(test, ref))["grad_cosine"])


def test_grad_key_mismatch_names_missing_and_extra_parameters():
    with pytest.raises(GradKeysMismatchError) as caught:
        grad_metrics({"a": torch.ones(1), "z": torch.ones(1)}, {"a": torch.ones(1), "b": torch.ones(1)})
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, KeyError)
    assert str(caught.value) == "gradient keys differ: test lacks b, test has extra z"


# ---- layers -------------------------------------------------------------------------------------

def test_layer_errors_are_relative_per_layer():
    ref = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])]
    test = [torch.tensor([3.0, 4.5]), torch.tensor([1.0, 1.0])]
    errors = layer_errors(test, ref)
    assert [e.layer for e in errors] == [0, 1]
    assert errors[0].rel_error == pytest.approx(0.1) and errors[1].rel_error == 0.0
    with pytest.raises(MetricInputError, match="test has 1, ref has 2"):
        layer_errors(test[:1], ref)


# Per-layer relative errors of a random 8-layer tiny Llama against fp64 (CPU, measured once).
BF16_SMOOTH = [5.89e-3, 6.60e-3, 7.03e-3, 7.56e-3, 7.51e-3, 7.81e-3, 7.95e-3, 8.00e-3]
BF16_LAYER0_CORRUPT = [2.42e-1, 2.19e-1, 2.09e-1, 2.00e-1, 1.86e-1, 1.78e-1, 1.71e-1, 1.66e-1]
BF16_LAYER4_CORRUPT = [5.89e-3, 6.60e-3, 7.03e-3, 7.56e-3, 5.88e-2, 6.06e-2, 5.92e-2, 5.87e-2]
FP8_SMOOTH = [6.25e-2, 7.29e-2, 8.65e-2, 8.87e-2, 8.90e-2, 9.26e-2, 9.29e-2, 9.10e-2]
FP32_SMOOTH = [3.76e-7, 4.13e-7, 4.09e-7, 4.13e-7, 4.08e-7, 4.21e-7, 4.13e-7, 4.09e-7]


@pytest.mark.parametrize(("swapped", "stock", "floor", "expected"), [
    (BF16_LAYER0_CORRUPT, BF16_SMOOTH, 1e-2, 0),
    (BF16_LAYER4_CORRUPT, BF16_SMOOTH, 1e-2, 4),
    ([e * 1.3 for e in BF16_SMOOTH], BF16_SMOOTH, 1e-2, None),  # tracks stock's noise
    (FP8_SMOOTH, [e * 0.9 for e in FP8_SMOOTH], 5e-2, None),
    (FP32_SMOOTH, FP32_SMOOTH, 1e-5, None),
    ([0.0, 0.0, 0.0, 0.5, 0.6], [0.0] * 5, 1e-5, 3),  # exact until layer 3
    ([1e-7, 1e-6, 3e-6], [0.0] * 3, 1e-5, None),  # rounding noise over an exact stock stays below the floor
    ([1e-3, 2e-3, math.nan, 1.0], [1e-3, 2e-3, 3e-3, 4e-3], 1e-2, 2),  # a non-finite error diverges
], ids=["layer0-corrupt", "layer4-corrupt", "bf16-tracks-stock", "fp8-tracks-stock", "fp32-identical",
        "exact-then-jump", "below-floor", "nan"])
def test_first_divergent_layer_against_stock(swapped, stock, floor, expected):
    assert first_divergent_layer(swapped, stock, floor=floor) == expected


def test_first_divergent_layer_reports_the_layer_index_it_was_given():
    swapped = [LayerError(layer=10 + i, rel_error=e, max_abs=0.0) for i, e in enumerate(BF16_LAYER4_CORRUPT)]
    stock = [LayerError(layer=10 + i, rel_error=e, max_abs=0.0) for i, e in enumerate(BF16_SMOOTH)]
    assert first_divergent_layer(swapped, stock, floor=1e-2) == 14


def test_the_factor_decides_how_far_above_stock_counts():
    assert first_divergent_layer([0.03, 0.09], [0.03, 0.03], floor=0.01, factor=4.0) is None
    assert first_divergent_layer([0.03, 0.09], [0.03, 0.03], floor=0.01, factor=2.0) == 1


def test_layer_counts_must_match():
    with pytest.raises(MetricInputError, match="3 swapped layer errors but 2 stock ones"):
        first_divergent_layer([0.1, 0.2, 0.3], [0.1, 0.2], floor=0.01)


# ---- tokens -------------------------------------------------------------------------------------

def test_token_match_rates_up_to_first_divergence_and_overall():
    ref = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    test = torch.tensor([[1, 2, 9, 4], [1, 2, 3, 4]])
    match = token_match_rate(test, ref)
    assert match.first_mismatch == (2, None)
    assert match.prefix_match_rate == (2 + 4) / 8
    assert match.overall_match_rate == 7 / 8
    assert token_match_rate(torch.tensor([7, 2, 3]), torch.tensor([1, 2, 3])).prefix_match_rate == 0.0


def test_token_shapes_must_agree():
    with pytest.raises(MetricInputError, match="token ids shapes differ"):
        token_match_rate(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


def test_a_position_mask_leaves_pad_positions_out():
    ref = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    test = ref.clone()
    test[0, :2] += 100.0  # garbage at two "pad" positions
    real = torch.ones(2, 5, dtype=torch.bool)
    real[0, :2] = False
    assert logits_metrics(test, ref, mask=real).max_abs == 0.0
    assert logits_metrics(test, ref).max_abs == pytest.approx(100.0)
    hidden = [test[..., :4]], [ref[..., :4]]
    assert layer_errors(*hidden, mask=real)[0].rel_error == 0.0 < layer_errors(*hidden)[0].rel_error
    with pytest.raises(MetricInputError, match="bool of shape"):
        logits_metrics(test, ref, mask=real.long())
    with pytest.raises(MetricInputError, match="no position"):
        logits_metrics(test, ref, mask=torch.zeros_like(real))

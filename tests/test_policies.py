"""Tolerance policies: the absolute and relative-to-stock rules, files, overrides, error messages."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from teswap.parity.metrics import grad_comparison, token_errors
from teswap.parity.paired import PairedSamples
from teswap.parity.policies import POLICIES
from teswap.parity.policy_files import get_policy, override, parse_overrides
from teswap.parity.rule import METRICS, Bound, Policy, PolicyError, evaluate


def policy(*bounds: Bound) -> Policy:
    return Policy(name="crafted", version=3, description="test", provenance="test",
                  bounds={b.name: b for b in bounds})


def absolute(metric: str, value: float) -> Bound:
    return Bound(metric=metric, kind=METRICS[metric][0], value=value, provenance="test")


def vs_stock(metric: str, factor: float, slack: float = 0.0, lower: float | None = None) -> Bound:
    return Bound(metric=metric, kind=METRICS[metric][0], value=factor, relative_to_stock=True, slack=slack,
                 lower=lower, provenance="test")


def one_line_error(call, *args, match: str) -> str:
    with pytest.raises(PolicyError, match=match) as caught:
        call(*args)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ---- evaluate: two verdicts --------------------------------------------------------------------

KL = policy(absolute("kl_div", 2.0), vs_stock("kl_div", 4.0, slack=0.5))  # relative limit: 4·stock + 0.5


@pytest.mark.parametrize(("swapped", "stock", "swap_passed", "stock_fit"), [
    (1.0, 0.125, True, True),  # exactly on the relative limit 4·0.125 + 0.5 = 1.0
    (1.5, 0.125, False, True),  # inside the absolute bound, 12x worse than stock: the swap is wrong
    (1.5, 0.25, True, True),  # stock is worse too: limit 1.5
    (2.5, 1.0, True, True),  # over the absolute bound but within 4x of stock: not the swap's fault
    (3.0, 2.5, True, False),  # stock fails the absolute bound too: the precision is lossy, the swap is fine
    (0.5, 0.0, True, True),  # stock exact: the relative limit is the slack alone
    (0.75, 0.0, False, True),
], ids=["on-limit", "worse-than-stock", "stock-also-worse", "absolute-only", "precision-lossy", "slack-only",
        "over-slack"])
def test_the_swap_is_judged_against_stock_and_the_precision_on_its_own(swapped, stock, swap_passed, stock_fit):
    verdict = evaluate(KL, {"kl_div": swapped}, {"kl_div": stock})
    assert verdict.passed is swap_passed
    assert [row.bound for row in verdict.failures] == ([] if swap_passed else ["kl_div_vs_stock"])
    assert verdict.precision_passed is stock_fit
    (absolute_row,) = verdict.precision_rows
    assert absolute_row.passed is (swapped <= 2.0) and absolute_row.stock_passed is stock_fit


def test_agreement_like_relative_rule_mirrors_around_perfect_agreement():
    top1 = policy(vs_stock("top1_agreement", 2.0, slack=0.125))  # shortfall ≤ 2·stock's + 0.125
    stock = {"top1_agreement": 0.875}  # stock misses 1/8: swapped may miss 2/8 + 1/8
    assert evaluate(top1, {"top1_agreement": 0.625}, stock).passed
    assert not evaluate(top1, {"top1_agreement": 0.6}, stock).passed
    row = evaluate(top1, {"top1_agreement": 0.625}, stock).rows[0]
    assert (row.value, row.stock_value, row.limit) == (0.625, 0.875, 0.625)
    assert row.rule == "≥ 1 − 2 × (1 − stock) − 0.125"
    assert row.ratio == pytest.approx(3.0)


def test_a_swap_far_more_accurate_than_stock_is_not_running_the_precision():
    floored = policy(vs_stock("rel_rms", 2.0, slack=0.0, lower=0.5))
    assert evaluate(floored, {"rel_rms": 0.06}, {"rel_rms": 0.1}).passed
    verdict = evaluate(floored, {"rel_rms": 0.01}, {"rel_rms": 0.1})  # FP8 quantization skipped, say
    assert not verdict.passed and verdict.failures[0].failure == "better than stock"
    assert "shortfall ≥ 0.5 × stock's" in verdict.failures[0].rule


def test_absolute_min_bound_and_an_infinite_sqnr():
    sqnr = policy(absolute("sqnr_db", 30.0), vs_stock("kl_div", 4.0))
    verdict = evaluate(sqnr, {"sqnr_db": math.inf, "kl_div": 0.0}, {"sqnr_db": 29.9, "kl_div": 0.0})
    assert verdict.passed and verdict.precision_rows[0].passed and verdict.precision_rows[0].stock_passed is False
    assert not evaluate(sqnr, {"sqnr_db": 29.9, "kl_div": 0.0}, {"kl_div": 0.0}).precision_rows[0].passed


def test_nan_fails_every_kind_of_bound():
    both = policy(absolute("top1_agreement", 0.9), vs_stock("kl_div", 4.0), absolute("kl_div", 1.0))
    verdict = evaluate(both, {"top1_agreement": math.nan, "kl_div": math.nan}, {"kl_div": 0.1})
    assert [row.bound for row in verdict.failures] == ["kl_div_vs_stock"]
    assert not any(row.passed for row in verdict.precision_rows)
    assert not evaluate(policy(vs_stock("kl_div", 4.0)), {"kl_div": 0.0}, {"kl_div": math.nan}).passed


def test_missing_metrics_raise_or_are_listed_as_skipped():
    both = policy(absolute("kl_div", 1.0), vs_stock("top1_agreement", 2.0), absolute("grad_cosine", 0.9),
                  vs_stock("kl_div", 4.0))
    message = one_line_error(evaluate, both, {"kl_div": 0.1, "top1_agreement": 1.0}, {"kl_div": 0.1},
                             match="did not report")
    assert "stock top1_agreement" in message and "swapped grad_cosine" in message
    verdict = evaluate(both, {"kl_div": 0.1, "top1_agreement": 1.0}, {"kl_div": 0.1}, missing="skip")
    assert verdict.passed and verdict.skipped == ("top1_agreement_vs_stock", "grad_cosine")
    assert verdict.policy == "crafted v3"
    assert not evaluate(both, {}, {}, missing="skip").passed  # nothing checked is not a pass


# ---- evaluate on paired samples (the bootstrap) -------------------------------------------------

def _paired(swapped: torch.Tensor, stock: torch.Tensor, block: int = 16) -> PairedSamples:
    return PairedSamples(swapped=swapped, stock=stock, blocks=torch.arange(swapped.numel()) // block)


REL = policy(vs_stock("kl_div", 2.0, slack=0.0, lower=0.5))


def test_a_swap_equal_to_stock_never_fails_however_noisy():
    """Stock and swapped drawn from the same distribution: no verdict fails over many draws."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        stock = torch.rand(256, generator=generator, dtype=torch.float64) ** 4  # heavy-tailed per-token errors
        swapped = torch.rand(256, generator=generator, dtype=torch.float64) ** 4
        verdict = evaluate(REL, {"kl_div": 0.0}, {"kl_div": 0.0}, samples={"kl_div": _paired(swapped, stock)})
        assert verdict.passed, verdict.rows
        assert verdict.rows[0].judged == "bootstrap"


def test_a_swap_far_worse_than_stock_fails_and_reports_the_ratio_interval():
    generator = torch.Generator().manual_seed(1)
    stock = torch.rand(256, generator=generator, dtype=torch.float64)
    verdict = evaluate(REL, {"kl_div": 0.0}, {"kl_div": 0.0}, samples={"kl_div": _paired(3 * stock, stock)})
    (row,) = verdict.rows
    assert not verdict.passed and row.failure == "worse than stock"
    assert row.ratio == pytest.approx(3.0) and row.ratio_ci[0] == pytest.approx(3.0)
    assert row.value == pytest.approx(3 * stock.mean().item())  # the metric over all units, not the point input


def test_worse_in_a_few_blocks_only_is_not_enough_to_fail():
    """2.4x stock's mean, but from one block: the interval reaches below the factor, so the swap passes."""
    stock = torch.full((256,), 0.1, dtype=torch.float64)
    swapped = stock.clone()
    swapped[:16] = 2.34  # one block of 16 carries the whole excess
    row = evaluate(REL, {"kl_div": 0.0}, {"kl_div": 0.0}, samples={"kl_div": _paired(swapped, stock)}).rows[0]
    assert row.ratio > 2.0 and row.ratio_ci[0] < 2.0 and row.passed


def test_far_more_accurate_than_stock_on_samples_fails_the_floor():
    stock = torch.rand(256, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    row = evaluate(REL, {"kl_div": 0.0}, {"kl_div": 0.0}, samples={"kl_div": _paired(0.1 * stock, stock)}).rows[0]
    assert not row.passed and row.failure == "better than stock"


def test_paired_samples_finish_turns_sums_into_the_metric():
    """rel_rms = sqrt(Σ sq_error / Σ ref_sq): a swapped error 4x in square is 2x in rel_rms."""
    ones = torch.ones(64, dtype=torch.float64)
    samples = PairedSamples(swapped=4 * ones, stock=ones, blocks=torch.arange(64) // 16, denominator=100 * ones,
                            finish=torch.sqrt)
    assert samples.values() == pytest.approx((0.2, 0.1))
    swapped, stock = samples.resampled(resamples=50)
    assert torch.allclose(swapped, torch.full((50,), 0.2, dtype=torch.float64))


# ---- bounds and policies ------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "match"), [
    ({"metric": "kl_dv", "kind": "max", "value": 1.0}, "unknown metric 'kl_dv'"),
    ({"metric": "cosine", "kind": "max", "value": 1.0}, "cosine is bounded with kind 'min'"),
    ({"metric": "sqnr_db", "kind": "min", "value": 1.0, "relative_to_stock": True}, "no finite perfect"),
    ({"metric": "kl_div", "kind": "max", "value": 1.0, "slack": 0.1}, "apply only to relative"),
    ({"metric": "kl_div", "kind": "max", "value": 1.0, "lower": 0.1}, "apply only to relative"),
    ({"metric": "kl_div", "kind": "max", "value": 2.0, "relative_to_stock": True, "lower": 2.0}, "below the factor"),
    ({"metric": "kl_div", "kind": "max", "value": -1.0, "relative_to_stock": True}, "finite and ≥ 0"),
    ({"metric": "kl_div", "kind": "max", "value": math.nan}, "NaN"),
])
def test_bad_bounds_are_refused(fields, match):
    one_line_error(lambda: Bound(provenance="test", **fields), match=match)


SWAP_BOUNDS = {"rel_rms_vs_stock", "kl_div_vs_stock", "top1_agreement_vs_stock", "grad_rel_norm_error_vs_stock",
               "prefix_match_rate_vs_stock"}
PRECISION_BOUNDS = {"rel_rms", "sqnr_db", "kl_div", "top1_agreement", "loss_diff", "grad_rel_norm_error"}


def test_named_policies_have_swap_and_precision_bounds_with_provenance():
    for name, factory in POLICIES.items():
        built = factory()
        assert built.name == name and built.version == 2
        assert "calibrate_policies.py" in built.provenance
        assert all(bound.provenance for bound in built.bounds.values())
        assert built.bounds.keys() == SWAP_BOUNDS | PRECISION_BOUNDS
        lossy = name.startswith("fp8") or name in ("mxfp8", "nvfp4")
        assert (built.bounds["rel_rms_vs_stock"].lower is not None) is lossy  # FP8 skipped must not pass
    assert "rtol 1.3e-6" in POLICIES["fp32"]().provenance and "atol 0.1" in POLICIES["bf16"]().provenance
    assert "E4M3 rtol 0.125" in POLICIES["mxfp8"]().provenance
    fp4, fp8 = POLICIES["nvfp4"](), POLICIES["mxfp8"]()
    assert "E2M1 rtol 0.5" in fp4.provenance and fp4.bounds["rel_rms"].value > fp8.bounds["rel_rms"].value


@pytest.mark.parametrize("metric", sorted(PRECISION_BOUNDS))
def test_precision_bounds_loosen_from_fp32_to_bf16_to_fp8(metric):
    values = [POLICIES[name]().bounds[metric].value for name in ("fp32", "bf16", "fp8-current")]
    loosening = values if METRICS[metric][0] == "max" else [-v for v in values]
    assert loosening[0] < loosening[1] < loosening[2]


def test_every_metric_a_parity_case_reports_is_boundable():
    errors = token_errors(torch.randn(2, 4, 8), torch.randn(2, 4, 8))
    names = set(errors.summary(1.0)) | {"loss_diff", "prefix_match_rate"}
    names |= grad_comparison({"a": torch.ones(2)}, {"a": torch.ones(2)})[0].keys()
    assert names <= METRICS.keys()


def test_policy_keys_must_match_bound_names():
    one_line_error(lambda: Policy(name="x", version=1, description="", provenance="",
                                  bounds={"cosine": absolute("kl_div", 1.0)}), match="do not match")


# ---- names, files, overrides --------------------------------------------------------------------

def test_unknown_policy_name_lists_the_known_ones():
    message = one_line_error(get_policy, "bf61", match="unknown policy 'bf61'")
    assert "fp8-delayed" in message and ".json" in message


def test_json_round_trip_reproduces_the_policy(tmp_path):
    path = tmp_path / "bf16-copy.json"
    path.write_text(json.dumps(get_policy("bf16").to_dict()), encoding="utf-8")
    assert get_policy(path) == get_policy("bf16")


def test_json_file_overrides_selected_bounds_of_a_base(tmp_path):
    path = tmp_path / "strict.json"
    path.write_text(json.dumps({"base": "bf16", "bounds": {
        "kl_div": 0.5,
        "kl_div_vs_stock": {"slack": 0.25},
        "top5_agreement": {"value": 0.95, "provenance": "MLPerf-style"},
        "sqnr_db": None,
    }}), encoding="utf-8")
    loaded, base = get_policy(str(path)), get_policy("bf16")
    assert loaded.name == "bf16+strict" and loaded.version == base.version
    assert loaded.bounds["kl_div"].value == 0.5 and "strict.json" in loaded.bounds["kl_div"].provenance
    assert loaded.bounds["kl_div_vs_stock"] == dataclasses.replace(
        base.bounds["kl_div_vs_stock"], slack=0.25, provenance=loaded.bounds["kl_div_vs_stock"].provenance)
    assert loaded.bounds["top5_agreement"].kind == "min"
    assert "sqnr_db" not in loaded.bounds
    assert loaded.bounds["rel_rms"] == base.bounds["rel_rms"]


@pytest.mark.parametrize(("content", "match"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "holds a JSON object"),
    ('{"base": "bf16", "bonds": {}}', r"unknown field\(s\) \['bonds'\]"),
    ('{"base": "bf17"}', "unknown base policy 'bf17'"),
    ('{"name": "x", "bounds": {}}', "without 'base' needs"),
    ('{"base": "bf16", "bounds": {"kl_dv": 1}}', "unknown bound 'kl_dv'"),
    ('{"base": "bf16", "bounds": {"kl_div": "small"}}', "bound kl_div must be a number"),
    ('{"base": "bf16", "bounds": {"kl_div": {"valeu": 1}}}', r"unknown field\(s\) \['valeu'\]"),
    ('{"base": "bf16", "bounds": {"top5_agreement": {"slack": 1}}}', "needs a value"),
    ('{"base": "bf16", "bounds": {"top1_agreement": {"kind": "max"}}}', "kind 'min'"),
    ('{"base": "bf16", "bounds": {"max_abs": null}}', "cannot drop bound max_abs"),
], ids=["syntax", "not-object", "typo-field", "bad-base", "no-header", "bad-bound", "not-number",
        "typo-bound-field", "new-without-value", "wrong-kind", "drop-missing"])
def test_bad_policy_files_are_refused_in_one_line_naming_the_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    assert "bad.json" in one_line_error(get_policy, str(path), match=match)


def test_missing_policy_file():
    one_line_error(get_policy, "nowhere/strict.json", match="policy file not found: nowhere/strict.json")


def test_command_line_overrides_change_add_and_record(tmp_path):
    base = get_policy("bf16")
    changed = override(base, parse_overrides(["kl_div=0.01", "kl_div_vs_stock.slack=1e-6",
                                              "top5_agreement=0.9"]))
    assert changed.bounds["kl_div"].value == 0.01
    assert changed.bounds["kl_div"].provenance == "set by --tol, replacing ≤ 0.01"
    assert changed.bounds["kl_div_vs_stock"].slack == 1e-6
    assert changed.bounds["kl_div_vs_stock"].value == base.bounds["kl_div_vs_stock"].value
    assert changed.bounds["top5_agreement"].kind == "min"
    assert base == get_policy("bf16")  # the original is untouched
    verdict = evaluate(changed, {"kl_div": 0.02}, {"kl_div": 0.02}, missing="skip")
    assert verdict.passed  # swapped equals stock: the swap is fine ...
    assert [row.bound for row in verdict.precision_failures] == ["kl_div"]  # ... the precision is not


@pytest.mark.parametrize(("values", "match"), [
    ({"kl_dv": 1.0}, "unknown bound 'kl_dv'"),
    ({"kl_div.factor": 1.0}, "only BOUND or BOUND.slack"),
    ({"sqnr_db_vs_stock": 1.0}, "no finite perfect score"),
    ({"kl_div.slack": 1.0}, "apply only to relative"),
])
def test_bad_overrides_are_refused(values, match):
    assert one_line_error(override, get_policy("bf16"), values, match=match).startswith("--tol")


@pytest.mark.parametrize("text", ["kl_div", "kl_div=", "=0.1", "kl_div=small"])
def test_bad_override_strings_are_refused(text):
    one_line_error(parse_overrides, [text], match="BOUND=NUMBER")

"""Tolerance policies: the absolute and relative-to-stock rules, files, overrides, error messages."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from teswap.parity.metrics import LogitsMetrics, grad_metrics, grad_summary, token_match_rate
from teswap.parity.policies import POLICIES
from teswap.parity.policy_files import get_policy, override, parse_overrides
from teswap.parity.rule import METRICS, Bound, Policy, PolicyError, evaluate


def policy(*bounds: Bound) -> Policy:
    return Policy(name="crafted", version=3, description="test", provenance="test",
                  bounds={b.name: b for b in bounds})


def absolute(metric: str, value: float) -> Bound:
    return Bound(metric=metric, kind=METRICS[metric][0], value=value, provenance="test")


def vs_stock(metric: str, factor: float, slack: float = 0.0) -> Bound:
    return Bound(metric=metric, kind=METRICS[metric][0], value=factor, relative_to_stock=True, slack=slack,
                 provenance="test")


def one_line_error(call, *args, match: str) -> str:
    with pytest.raises(PolicyError, match=match) as caught:
        call(*args)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ---- evaluate -----------------------------------------------------------------------------------

KL = policy(absolute("kl_div", 2.0), vs_stock("kl_div", 4.0, slack=0.5))  # relative limit: 4·stock + 0.5


@pytest.mark.parametrize(("swapped", "stock", "passed", "failures"), [
    (1.0, 0.125, True, []),  # exactly on the relative limit 4·0.125 + 0.5 = 1.0
    (1.5, 0.125, False, ["kl_div_vs_stock"]),  # inside the absolute bound, 12x worse than stock
    (1.5, 0.25, True, []),  # stock is worse too: limit 1.5
    (2.5, 1.0, False, ["kl_div"]),  # within 4x of stock, but over the absolute bound
    (0.5, 0.0, True, []),  # stock exact: the relative limit is the slack alone
    (0.75, 0.0, False, ["kl_div_vs_stock"]),
], ids=["on-limit", "worse-than-stock", "stock-also-worse", "absolute-fails", "slack-only", "over-slack"])
def test_error_like_bounds_absolute_and_relative_to_stock(swapped, stock, passed, failures):
    verdict = evaluate(KL, {"kl_div": swapped}, {"kl_div": stock})
    assert verdict.passed is passed
    assert [row.bound for row in verdict.failures] == failures


def test_agreement_like_relative_rule_mirrors_around_perfect_agreement():
    top1 = policy(vs_stock("top1_agreement", 2.0, slack=0.125))  # shortfall ≤ 2·stock's + 0.125
    stock = {"top1_agreement": 0.875}  # stock misses 1/8: swapped may miss 2/8 + 1/8
    assert evaluate(top1, {"top1_agreement": 0.625}, stock).passed
    assert not evaluate(top1, {"top1_agreement": 0.6}, stock).passed
    row = evaluate(top1, {"top1_agreement": 0.625}, stock).rows[0]
    assert (row.value, row.stock_value, row.limit) == (0.625, 0.875, 0.625)
    assert row.rule == "≥ 1 − 2 × (1 − stock) − 0.125"


def test_absolute_min_bound_and_an_infinite_sqnr():
    sqnr = policy(absolute("sqnr_db", 30.0))
    assert evaluate(sqnr, {"sqnr_db": math.inf}, {}).passed
    assert not evaluate(sqnr, {"sqnr_db": 29.9}, {}).passed


def test_nan_fails_every_kind_of_bound():
    both = policy(absolute("cosine", 0.9), vs_stock("kl_div", 4.0), absolute("kl_div", 1.0))
    verdict = evaluate(both, {"cosine": math.nan, "kl_div": math.nan}, {"kl_div": 0.1})
    assert {row.bound for row in verdict.failures} == {"cosine", "kl_div", "kl_div_vs_stock"}
    assert not evaluate(policy(vs_stock("kl_div", 4.0)), {"kl_div": 0.0}, {"kl_div": math.nan}).passed


def test_missing_metrics_raise_or_are_listed_as_skipped():
    both = policy(absolute("kl_div", 1.0), vs_stock("top1_agreement", 2.0), absolute("grad_cosine", 0.9))
    message = one_line_error(evaluate, both, {"kl_div": 0.1, "top1_agreement": 1.0}, {}, match="did not report")
    assert "stock top1_agreement" in message and "swapped grad_cosine" in message
    verdict = evaluate(both, {"kl_div": 0.1, "top1_agreement": 1.0}, {}, missing="skip")
    assert verdict.passed and verdict.skipped == ("top1_agreement_vs_stock", "grad_cosine")
    assert verdict.policy == "crafted v3"
    assert not evaluate(both, {}, {}, missing="skip").passed  # nothing checked is not a pass


# ---- bounds and policies ------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "match"), [
    ({"metric": "kl_dv", "kind": "max", "value": 1.0}, "unknown metric 'kl_dv'"),
    ({"metric": "cosine", "kind": "max", "value": 1.0}, "cosine is bounded with kind 'min'"),
    ({"metric": "sqnr_db", "kind": "min", "value": 1.0, "relative_to_stock": True}, "no finite perfect"),
    ({"metric": "kl_div", "kind": "max", "value": 1.0, "slack": 0.1}, "slack applies only to relative"),
    ({"metric": "kl_div", "kind": "max", "value": -1.0, "relative_to_stock": True}, "finite and ≥ 0"),
    ({"metric": "kl_div", "kind": "max", "value": math.nan}, "NaN"),
])
def test_bad_bounds_are_refused(fields, match):
    one_line_error(lambda: Bound(provenance="test", **fields), match=match)


def test_named_policies_build_cite_te_and_their_calibration():
    for name, factory in POLICIES.items():
        built = factory()
        assert built.name == name and built.version >= 1
        assert "calibrated on 216 clean CPU swaps" in built.provenance
        if name in ("fp32", "bf16", "fp8-delayed", "fp8-current"):  # measured on CPU; block/mxfp8 need a GPU
            assert "worst clean value" in built.bounds["robust_rel"].provenance
        assert all(bound.provenance for bound in built.bounds.values())
        assert {"kl_div", "cosine", "sqnr_db", "top1_agreement", "kl_div_vs_stock"} <= built.bounds.keys()
    assert "rtol 1.3e-6" in POLICIES["fp32"]().provenance and "atol 0.1" in POLICIES["bf16"]().provenance
    assert "E4M3 rtol 0.125" in POLICIES["mxfp8"]().provenance
    assert POLICIES["fp32"]().bounds["max_abs"].value == 5e-3


@pytest.mark.parametrize("metric", ["robust_rel", "cosine", "sqnr_db", "kl_div", "top1_agreement",
                                    "loss_diff", "grad_rel_norm_error", "grad_cosine"])
def test_policies_loosen_from_fp32_to_bf16_to_fp8(metric):
    values = [POLICIES[name]().bounds[metric].value for name in ("fp32", "bf16", "fp8-current")]
    loosening = values if METRICS[metric][0] == "max" else [-v for v in values]
    assert loosening[0] < loosening[1] < loosening[2]


def test_metric_names_from_teswap_metrics_are_all_boundable():
    names = {field.name for field in dataclasses.fields(LogitsMetrics)}
    ones = {"a": torch.ones(2)}
    names |= grad_summary(grad_metrics(ones, ones)).keys() | {"loss_diff"}
    names |= token_match_rate(torch.ones(3), torch.ones(3)).as_dict().keys()
    assert names == METRICS.keys()


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
    assert loaded.bounds["cosine"] == base.bounds["cosine"]


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
    ('{"base": "bf16", "bounds": {"cosine": {"kind": "max"}}}', "kind 'min'"),
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
    assert changed.bounds["kl_div"].provenance == "set by --tol, replacing ≤ 0.001"
    assert changed.bounds["kl_div_vs_stock"].slack == 1e-6
    assert changed.bounds["kl_div_vs_stock"].value == base.bounds["kl_div_vs_stock"].value
    assert changed.bounds["top5_agreement"].kind == "min"
    assert base == get_policy("bf16")  # the original is untouched
    verdict = evaluate(changed, {"kl_div": 0.02}, {"kl_div": 0.02}, missing="skip")
    assert [row.bound for row in verdict.failures] == ["kl_div"]


@pytest.mark.parametrize(("values", "match"), [
    ({"kl_dv": 1.0}, "unknown bound 'kl_dv'"),
    ({"kl_div.factor": 1.0}, "only BOUND or BOUND.slack"),
    ({"sqnr_db_vs_stock": 1.0}, "no finite perfect score"),
    ({"kl_div.slack": 1.0}, "slack applies only to relative"),
])
def test_bad_overrides_are_refused(values, match):
    assert one_line_error(override, get_policy("bf16"), values, match=match).startswith("--tol")


@pytest.mark.parametrize("text", ["kl_div", "kl_div=", "=0.1", "kl_div=small"])
def test_bad_override_strings_are_refused(text):
    one_line_error(parse_overrides, [text], match="BOUND=NUMBER")

"""TE's recipes, autocast entry point and availability checks through our glue, per TE API generation.

Run against te_standin's generations (2.1, 2.5, 2.9, 2.20): which recipe exists from which TE
version, which entry point and checks each version has, and that teswap's current-scaling settings
reach the QParams TE's modules read. These test teswap's glue, not TransformerEngine.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import te_standin
from support import llama, random_ids
from teswap import build_pair
from teswap.errors import BackendUnavailableError, UnsupportedConfigError
from teswap.hardware.probe import Availability, probe_te_recipe
from teswap.layers.backends import BACKENDS
from teswap.precision import recipes
from teswap.precision.runtime import precision_availability, require_precision, swapped_autocast
from teswap.precision.table import PRECISIONS
from teswap.precision.te_glue import te_recipe, te_recipe_fields

GENERATIONS = list(te_standin.GENERATIONS)
FP8 = [name for name, precision in PRECISIONS.items() if precision.is_fp8]
# The TE version each recipe class first appears in (read from TE's tags).
SINCE = {"DelayedScaling": "2.0", "MXFP8BlockScaling": "2.0", "Float8CurrentScaling": "2.2",
         "Float8BlockScaling": "2.3", "NVFP4BlockScaling": "2.8"}


@pytest.fixture(params=GENERATIONS, ids=[f"te{v}" for v in GENERATIONS])
def version(request) -> str:
    return request.param


@pytest.fixture
def te(monkeypatch, version):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the probe's CUDA check; math stays on CPU
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))  # NVFP4's SM 10.x
    return te_standin.install(monkeypatch, version)


def has_recipe(version: str, precision: str) -> bool:
    return PRECISIONS[precision].fp8_recipe in te_standin.GENERATIONS[version].recipes


# --- availability ----------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", FP8)
def test_a_recipe_is_available_exactly_where_the_installed_te_has_it(te, version, precision):
    availability = precision_availability(precision, "te", "cuda")
    assert bool(availability) == has_recipe(version, precision)
    if not availability:
        recipe_class = PRECISIONS[precision].fp8_recipe
        expected = f"{recipe_class} needs TransformerEngine >= {SINCE[recipe_class]}; {version} is installed"
        assert availability.reason == expected
        with pytest.raises(BackendUnavailableError, match=expected):
            require_precision(precision, "te", "cuda")
        with pytest.raises(UnsupportedConfigError, match=expected):
            te_recipe(precision)


@pytest.mark.parametrize("precision, check, reason", [
    ("mxfp8", "is_mxfp8_available", "Device compute capability 10.0 or higher required for MXFP8 execution."),
    ("fp8-delayed", "is_fp8_available", "Device compute capability 8.9 or higher required for FP8 execution."),
    ("fp8-block", "is_fp8_block_scaling_available", "FP8 block scaled GEMM requires Hopper and CUDA >= 12.9."),
], ids=["mxfp8", "delayed", "block"])
def test_an_unavailable_recipe_is_refused_with_tes_own_reason(te, version, precision, check, reason):
    if not has_recipe(version, precision):
        pytest.skip(f"TE {version} has no {PRECISIONS[precision].fp8_recipe}")
    te.answers[check] = (False, reason)  # what this generation's check (top-level or FP8GlobalStateManager) says
    with pytest.raises(BackendUnavailableError) as info:
        require_precision(precision, "te", "cuda")
    message = str(info.value)
    assert f"TransformerEngine {version}: {reason.rstrip('.')}" in message
    assert f"{PRECISIONS[precision].fp8_recipe} needs compute capability" in message


def test_a_te_generation_without_its_checks_is_a_moved_layout_not_a_crash(te, version):
    """The glue asks the place this version keeps its checks; a TE that moved them gets a clear refusal."""
    if te_standin.GENERATIONS[version].top_level_checks:
        del te.is_fp8_available
        missing = "transformer_engine.pytorch.is_fp8_available"
    else:
        del te.fp8.FP8GlobalStateManager
        missing = "transformer_engine.pytorch.fp8.FP8GlobalStateManager"
    availability = precision_availability("fp8-delayed", "te", "cuda")
    assert not availability and missing in availability.reason and "TE's layout moved" in availability.reason


# --- recipes ---------------------------------------------------------------------------------------


def test_delayed_scaling_carries_teswaps_settings(te, version):
    recipe = te_recipe("fp8-delayed")
    ours = recipes.DelayedScaling()
    assert type(recipe).__name__ == "DelayedScaling"
    assert (recipe.margin, recipe.amax_history_len, recipe.amax_compute_algo) == (
        ours.margin, ours.amax_history_len, ours.amax_compute_algo)
    assert recipe.fp8_format is te_standin.Format.HYBRID
    assert te_standin._to_emulation(recipe) == ours


@pytest.mark.parametrize("power_2, epsilon", [(True, 1e-3), (False, 0.0)], ids=["pow2-eps", "defaults"])
def test_current_scaling_settings_reach_the_qparams_tes_modules_read(te, version, monkeypatch, power_2, epsilon):
    if not has_recipe(version, "fp8-current"):
        pytest.skip(f"TE {version} has no Float8CurrentScaling")
    ours = recipes.Float8CurrentScaling(use_power_2_scales=power_2, amax_epsilon=epsilon)
    monkeypatch.setitem(recipes.RECIPES, "fp8-current", lambda: ours)
    recipe = te_recipe("fp8-current")
    for field in te_standin.QPARAMS_CLASS_ATTRS:
        qparams = getattr(recipe, field)
        assert (qparams.power_2_scale, qparams.amax_epsilon) == (power_2, epsilon)
    if "use_power_2_scales" in te_standin.GENERATIONS[version].recipes["Float8CurrentScaling"]:
        assert recipe.use_power_2_scales is power_2  # TE >= 2.8: the field too
    assert te_standin._to_emulation(recipe) == ours  # what TE's modules would run is what the twin runs


def test_the_power_2_environment_default_reaches_both_backends_alike(monkeypatch, version):
    """NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES=1: TE 2.8+ defaults to power-of-2 scales; so does teswap's recipe."""
    monkeypatch.setenv("NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES", "1")
    te_standin.install(monkeypatch, version)  # TE reads the variable at import
    if not has_recipe(version, "fp8-current"):
        pytest.skip(f"TE {version} has no Float8CurrentScaling")
    ours = recipes.RECIPES["fp8-current"]()
    assert ours.use_power_2_scales is True
    assert te_standin._to_emulation(te_recipe("fp8-current")) == ours
    monkeypatch.setitem(recipes.RECIPES, "fp8-current", lambda: recipes.Float8CurrentScaling(use_power_2_scales=False))
    assert te_recipe("fp8-current").fp8_quant_fwd_inp.power_2_scale is False  # teswap's explicit choice wins


def test_backward_override_from_the_environment_is_pinned_to_what_the_twin_emulates(monkeypatch, version):
    monkeypatch.setenv("NVTE_BACKWARD_OVERRIDE", "high_precision")
    te_standin.install(monkeypatch, version)
    for precision in ("fp8-delayed", "fp8-current"):
        if not has_recipe(version, precision):
            continue
        recipe = te_recipe(precision)
        assert getattr(recipe, "backward_override", None) is None  # the field (2.15+) pinned, else absent
        te_standin._to_emulation(recipe)  # raises on an override it cannot emulate


@pytest.mark.parametrize("precision", FP8)
def test_recipe_record_has_every_field_te_holds(te, version, precision):
    if not has_recipe(version, precision):
        pytest.skip(f"TE {version} has no {PRECISIONS[precision].fp8_recipe}")
    record = te_recipe_fields(precision)
    fields = te_standin.GENERATIONS[version].recipes[PRECISIONS[precision].fp8_recipe]
    assert set(fields) <= set(record)
    assert record["type"] == PRECISIONS[precision].fp8_recipe and record["te_version"] == version
    if precision == "fp8-current":
        assert record["fp8_quant_fwd_inp"]["power_2_scale"] is recipes.RECIPES[precision]().use_power_2_scales
        assert record["fp8_format"] == "HYBRID"


# --- autocast --------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp8-delayed", "fp8-current"])
def test_the_swapped_model_runs_under_this_generations_autocast(te, version, monkeypatch, precision):
    """autocast(recipe=) on TE >= 2.9, fp8_autocast(fp8_recipe=) before (it warns from 2.9, an error here)."""
    if not has_recipe(version, precision):
        pytest.skip(f"TE {version} has no {PRECISIONS[precision].fp8_recipe}")
    monkeypatch.setitem(BACKENDS, "te", dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True)))
    pair = build_pair(llama(), backend="te", dtype=torch.bfloat16)
    ids = random_ids(pair.config.vocab_size, seq=16)
    with torch.no_grad():
        plain = pair.swapped(ids).logits
        with swapped_autocast(precision, "te"):
            quantized = pair.swapped(ids).logits
    calls = te_standin.AUTOCAST_CALLS
    entry = "autocast" if te_standin.GENERATIONS[version].autocast else "fp8_autocast"
    assert [call["entry"] for call in calls] == [entry]
    assert calls[0]["kwargs"]["enabled"] is True
    assert type(calls[0]["recipe"]).__name__ == PRECISIONS[precision].fp8_recipe
    assert not torch.equal(plain, quantized)  # the recipe really quantized the GEMMs


@pytest.mark.parametrize("precision", ["fp8-delayed", "fp8-current"])
def test_fp8_parity_through_the_latest_standin(monkeypatch, precision):
    """The whole parity case on the te backend at FP8: our wiring, TE's recipe object, the policy."""
    from teswap.parity.case import ParityCase, run_parity_case

    te_standin.install(monkeypatch)
    monkeypatch.setitem(BACKENDS, "te", dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    report = run_parity_case(ParityCase(source="tiny", backend="te", precision=precision, gen_tokens=0))
    assert {type(call["recipe"]).__name__ for call in te_standin.AUTOCAST_CALLS} == {
        PRECISIONS[precision].fp8_recipe}
    assert report.passed, report.failure_summary()
    bf16 = run_parity_case(ParityCase(source="tiny", backend="te", precision="bf16", gen_tokens=0, grads=False))
    assert report.swapped["robust_rel"] > 3 * bf16.swapped["robust_rel"]  # the recipe really quantized


# --- block-scaled recipes --------------------------------------------------------------------------


@pytest.mark.parametrize("precision, ours", [
    ("fp8-block", recipes.Float8BlockScaling(use_f32_scales=True, fp8_format=recipes.Format.HYBRID)),
    ("fp8-block", recipes.Float8BlockScaling(use_f32_scales=False)),
    ("mxfp8", recipes.MXFP8BlockScaling(fp8_format=recipes.Format.HYBRID)),
    ("nvfp4", recipes.NVFP4BlockScaling(disable_rht=True, disable_stochastic_rounding=False)),
], ids=["block-f32", "block-pow2", "mxfp8-hybrid", "nvfp4-no-rht"])
def test_block_recipe_settings_reach_tes_recipe_by_its_field_names(te, version, monkeypatch, precision, ours):
    if not has_recipe(version, precision):
        pytest.skip(f"TE {version} has no {PRECISIONS[precision].fp8_recipe}")
    monkeypatch.setitem(recipes.RECIPES, precision, lambda: ours)
    recipe = te_recipe(precision)
    assert type(recipe).__name__ == PRECISIONS[precision].fp8_recipe
    if precision == "fp8-block":  # what TE's modules read: the QParams, not the constructor field
        assert {getattr(recipe, f).power_2_scale for f in te_standin.QPARAMS_CLASS_ATTRS} == {not ours.use_f32_scales}
    assert te_standin._to_emulation(recipe) == dataclasses.replace(ours, **(
        {"stochastic_rounding_seed": 0} if precision == "nvfp4" else {}))
    record = te_recipe_fields(precision)
    assert "stochastic_rounding_seed" not in record  # teswap's own field never poses as TE's


def test_nvfp4_is_refused_by_name_off_sm_10(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    te_standin.install(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (12, 0))  # TE's check says yes
    probe_te_recipe.cache_clear()
    availability = precision_availability("nvfp4", "te", "cuda")
    assert not availability and "NVFP4BlockScaling" in availability.reason and "SM 12.0" in availability.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    probe_te_recipe.cache_clear()  # the probe answers once per process, as the GPU does not change
    assert precision_availability("nvfp4", "te", "cuda")


@pytest.mark.parametrize("precision", ["fp8-block", "mxfp8", "nvfp4"])
def test_block_recipes_run_through_the_latest_standins_autocast(monkeypatch, precision):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    te_standin.install(monkeypatch)
    monkeypatch.setitem(BACKENDS, "te", dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True)))
    pair = build_pair(llama(), backend="te", dtype=torch.bfloat16)
    ids = random_ids(pair.config.vocab_size, seq=16)
    with torch.no_grad():
        plain = pair.swapped(ids).logits
        with swapped_autocast(precision, "te"):
            quantized = pair.swapped(ids).logits
    assert type(te_standin.AUTOCAST_CALLS[0]["recipe"]).__name__ == PRECISIONS[precision].fp8_recipe
    assert not torch.equal(plain, quantized)

"""Real TransformerEngine on a GPU: skipped with the probe's reason elsewhere."""

from __future__ import annotations

import pytest
import torch

from support import CONFIGS, logits_of, random_ids, rel_max_err
from teswap import build_pair

pytestmark = pytest.mark.te


@pytest.mark.parametrize("name", ["gqa", "explicit-head-dim", "llama3-rope-scaling", "yarn-attention-scaling"])
def test_te_layers_match_the_torch_twin_in_bf16(name):
    """TE and the twin against the same fp32 stock reference; TE no worse than the twin by 2x + slack."""
    te = build_pair(CONFIGS[name](), backend="te", dtype=torch.bfloat16, device="cuda")
    twin = build_pair(CONFIGS[name](), backend="torch", dtype=torch.bfloat16, device="cuda")
    ids = random_ids(te.config.vocab_size, seq=128).cuda()
    ref = logits_of(te.stock.float(), ids)
    te_err, twin_err = rel_max_err(logits_of(te.swapped, ids), ref), rel_max_err(logits_of(twin.swapped, ids), ref)
    assert te_err <= 2 * twin_err + 2**-8


def test_te_state_dict_names_match_the_mapping():
    pair = build_pair(CONFIGS["gqa"](), backend="te", device="cuda")
    assert pair.weights_equal


@pytest.mark.parametrize("precision", ["fp8-delayed", "fp8-current", "fp8-block", "mxfp8"])
def test_te_recipes_build_on_the_installed_te(precision):
    """Our version-aware glue against the real TE: the recipe builds or is refused naming TE's reason."""
    from teswap.precision.runtime import precision_availability
    from teswap.precision.te_glue import te_recipe, te_recipe_fields

    availability = precision_availability(precision, "te", "cuda")
    if not availability:
        assert "TransformerEngine" in availability.reason
        pytest.skip(availability.reason)
    record = te_recipe_fields(precision)
    assert record["type"] == te_recipe(precision).__class__.__name__
    if precision == "fp8-current":  # what TE's modules read for power-of-2 scales and the amax floor
        assert {"power_2_scale", "amax_epsilon"} <= set(record["fp8_quant_fwd_inp"])

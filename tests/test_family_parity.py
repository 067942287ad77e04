"""The swap verdict for every family (tiny presets, random weights with no constant tensors): a clean swap
passes at fp32, bf16 and both FP8 recipes, and each fault a family's swap can have fails it.

Shapes are short to keep the suite quick: 2 x 64 tokens (past every 16-token window; fewer than ~100
positions of a flat random model leave top-1 agreement to near-ties). The suite runs each family's
clean swap at fp32 (with gradients, mapped back through its rules), bf16 and one FP8 recipe, and its
own faults at bf16; scripts/calibrate_policies.py --families runs every precision and every fault.
"""

from __future__ import annotations

import pytest
import torch

from support import FAMILY_NAMES, FAMILY_PRESETS, family_config
from teswap import build_pair
from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.parity.mutations import applies_to, mutation

SHORT = dict(seq_len=64, batch=2, batches=1, gen_prompts=8, gen_tokens=4, grads=False)
# bf16 and one FP8 recipe per family (Llama's own tests run every precision), the recipes alternating;
# fp32 with gradients where a family's rules do more than rename (biases held at zero, fused rows, 1 + w)
OTHERS = [name for name in FAMILY_NAMES if name != "llama"]
CLEAN = [(family, precision) for index, family in enumerate(OTHERS)
         for precision in ("bf16", ("fp8-delayed", "fp8-current")[index % 2])]
CLEAN += [(family, "fp32") for family in ("qwen2", "phi3", "gemma3_text")]
MOE = ("mixtral", "qwen3_moe")
CLEAN += [(family, recipe) for family in MOE for recipe in ("fp8-delayed", "fp8-current")
          if (family, recipe) not in CLEAN]  # MoE: both recipes (routing flips are the MoE risk)


_BF16_PAIRS: dict[str, tuple] = {}


def _bf16_pair(family: str):
    """One bf16 pair and reference cache per family, shared by its bf16 and FP8 cases."""
    if family not in _BF16_PAIRS:
        _BF16_PAIRS[family] = (build_pair(FAMILY_PRESETS[family], dtype=torch.bfloat16), ReferenceCache())
    return _BF16_PAIRS[family]


@pytest.mark.parametrize("name, precision", CLEAN, ids=[f"{f}-{p}" for f, p in CLEAN])
def test_a_clean_swap_passes(name, precision):
    case = ParityCase(source=FAMILY_PRESETS[name], precision=precision, **(SHORT | {"grads": precision == "fp32"}))
    if precision == "fp32":  # gradients mapped back through the family's rules
        report = run_parity_case(case)
    else:
        pair, references = _bf16_pair(name)
        report = run_parity_case(case, pair=pair, references=references)
    assert report.passed, report.failure_summary()
    assert report.first_divergent_layer is None
    if name in MOE:  # routing reported beside the usual metrics, and recorded
        assert report.routing["tokens"] > 0 and 0.0 <= report.routing["agreement"] <= 1.0
        assert report.record().routing["aux_loss_swapped"] == report.routing["aux_loss_swapped"]


# The faults a family's adapter or the twin could get wrong, each on the families it applies to, at bf16
# on logits and per-layer states (no generation: the faults are gross).
FAULTS = ["qkv-bias-dropped", "window-off-by-one", "qk-norm-skipped", "gamma-not-centred"]
CASES = [(family, fault) for family in FAMILY_NAMES for fault in FAULTS if applies_to(fault, family_config(family))]


@pytest.mark.parametrize("name, fault", CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_each_family_fault_fails_the_swap_verdict(name, fault):
    preset = FAMILY_PRESETS[name]
    with mutation(fault, family_config(name)):  # the pair is built (and run) under the fault
        report = run_parity_case(ParityCase(source=preset, precision="bf16", **(SHORT | {"gen_prompts": 0})))
    assert not report.passed and report.first_divergent_layer is not None, report.failure_summary()


@pytest.mark.parametrize("name", ["qwen2", "gemma3_text"])
def test_fp8_skipped_is_caught_beyond_llama(name):
    with mutation("fp8-skipped"):
        report = run_parity_case(ParityCase(source=FAMILY_PRESETS[name], precision="fp8-current",
                                            **(SHORT | {"gen_prompts": 0})))
    assert not report.passed
    assert any(row.failure == "better than stock" for row in report.verdict.failures)

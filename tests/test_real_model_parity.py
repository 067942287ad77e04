"""The swap verdict on a trained model (SmolLM2-135M) and real text: clean swaps pass, every fault fails.

Random-init models have flat logits and no outlier features, so a verdict that holds on them may not
hold on the models people swap. Shapes are short to keep the suite quick; the closing figures at the
default shape come from `teswap check --model smollm2-135m` (and scripts/calibrate_policies.py).
"""

from __future__ import annotations

import pytest
import torch

from teswap import build_pair
from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.parity.mutations import mutation

SHORT = dict(source="smollm2-135m", seq_len=48, batch=2, batches=1, gen_prompts=16, gen_tokens=6, grads=False)


@pytest.fixture(scope="module")
def pairs(smollm2):
    """One fp32 and one bf16 pair, shared by the cases (bf16 and the FP8 recipes run on bf16 weights)."""
    return {torch.float32: build_pair("smollm2-135m"), torch.bfloat16: build_pair("smollm2-135m", dtype=torch.bfloat16)}


@pytest.fixture(scope="module")
def references():
    """The clean bf16 and FP8 cases share one pair and inputs, so one fp32 reference run serves them all."""
    return ReferenceCache()


def _case(precision: str, **overrides) -> ParityCase:
    return ParityCase(precision=precision, **(SHORT | overrides))


def _pair_for(pairs, precision):
    return pairs[torch.float32 if precision == "fp32" else torch.bfloat16]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8-delayed", "fp8-current"])
def test_a_clean_swap_of_the_trained_model_passes(pairs, references, precision):
    report = run_parity_case(_case(precision, grads=precision == "fp32"), pair=_pair_for(pairs, precision),
                             references=references)
    assert report.passed, report.failure_summary()
    assert "real text" in report.inputs
    if not precision.startswith("fp8"):  # FP8 stock (q, k, v scaled apart) and TE (one QKV scale) differ more
        assert report.perplexity["swapped"] == pytest.approx(report.perplexity["stock"], rel=0.05)


# Faults on logits and per-layer states only (no generation: the faults are gross, and
# the suite must stay quick); `scripts/calibrate_policies.py --mutations` runs every fault at every precision.
NO_GENERATION = dict(gen_prompts=0)


@pytest.mark.parametrize(("name", "precision"), [("gate-up-swapped", "bf16"), ("layer-at-init", "bf16")])
def test_a_fault_in_the_built_weights_fails(name, precision):
    with mutation(name):  # the pair is built under the fault
        report = run_parity_case(_case(precision, **NO_GENERATION))
    assert not report.passed and report.first_divergent_layer is not None


def test_rope_base_ignored_fails(pairs):
    with mutation("rope-base-10000"):  # SmolLM2's theta is 100000
        report = run_parity_case(_case("bf16", **NO_GENERATION), pair=_pair_for(pairs, "bf16"))
    assert not report.passed and report.first_divergent_layer is not None


def test_fp8_skipped_in_the_swapped_model_fails(pairs):
    with mutation("fp8-skipped"):
        report = run_parity_case(_case("fp8-current", **NO_GENERATION), pair=_pair_for(pairs, "fp8-current"))
    assert not report.passed
    assert any(row.failure == "better than stock" for row in report.verdict.failures)


# --- the trained model housed in other families' layouts (teswap.swap.checkpoints) -------------------


@pytest.mark.parametrize("family", ["mistral", "phi3"])
def test_rehoused_smollm2_is_the_same_function_in_another_familys_layout(smollm2, family):
    """Phi-3's fused qkv/gate_up hold SmolLM2's rows exactly; Mistral's 64-token window is inert below 64."""
    from transformers import AutoModelForCausalLM

    ids = smollm2.load_tokenizer()("The capital of France is", return_tensors="pt").input_ids
    llama = AutoModelForCausalLM.from_pretrained(smollm2.weights_dir, local_files_only=True).eval()
    pair = build_pair(f"smollm2-135m-as-{family}")
    assert type(pair.stock).__name__.lower().startswith(family) and pair.weights_equal
    with torch.no_grad():
        assert torch.equal(pair.stock(ids).logits, llama(ids).logits)
        assert torch.equal(pair.swapped(ids).logits, pair.stock(ids).logits)


def test_rehoused_qwen2_with_trained_weights_and_biases_passes_at_bf16(smollm2):
    """Trained weights in Qwen2's shape (seeded q/k/v biases, windows on half the layers) on real text."""
    pair = build_pair("smollm2-135m-as-qwen2", dtype=torch.bfloat16)
    report = run_parity_case(_case("bf16", source="smollm2-135m-as-qwen2", seq_len=80, batch=1, gen_prompts=4),
                             pair=pair)  # 80 tokens: past the 64-token windows of layers 15-29
    assert report.passed, report.failure_summary()
    assert "real text" in report.inputs
    with mutation("qkv-bias-dropped"):  # the fault is in the mapping: the pair is built under it
        broken = run_parity_case(_case("bf16", source="smollm2-135m-as-qwen2", seq_len=32, batch=1, **NO_GENERATION))
    assert not broken.passed and broken.first_divergent_layer is not None

"""FLOPs per token and MFU: known parameter counts, PaLM's formula, NeMo's published MFU, the peak table."""

from __future__ import annotations

import pytest
import torch

from support import llama
from teswap.benchmark.mfu import ModelShape, flops_per_token, model_flops_utilization, peak_for
from teswap.swap.presets import PRESETS


def shape(name: str) -> ModelShape:
    return ModelShape.from_config(PRESETS[name]())


@pytest.mark.parametrize("preset, params", [
    ("llama2-7b", 6_738_415_616), ("llama3-8b", 8_030_261_248), ("llama3.2-1b", 1_235_814_400),
])
def test_parameter_counts_match_the_published_models(preset, params):
    assert shape(preset).params == params


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama3"])
def test_parameter_count_matches_a_built_model(preset):
    with torch.device("meta"):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(PRESETS[preset]())
    assert shape(preset).params == sum(p.numel() for p in model.parameters())  # tied weights counted once


def test_llama2_7b_training_flops_follow_palm():
    s, seq = shape("llama2-7b"), 4096
    embedding_lookup, norms = 32000 * 4096, (2 * 32 + 1) * 4096
    expected = 6 * (6_738_415_616 - embedding_lookup - norms) + 12 * 32 * 32 * 128 * seq
    assert flops_per_token(s, seq, "train") == expected
    # The rounded form 6·6.74e9 + 12·L·H·Q·T also counts the embedding lookup: within 2%.
    assert flops_per_token(s, seq, "train") == pytest.approx(6 * 6.74e9 + 12 * 32 * 32 * 128 * seq, rel=0.02)


def test_prefill_is_a_third_of_training_with_one_lm_head_row_per_sequence():
    s, seq = shape("llama3-8b"), 2048
    lm_head = 128256 * 4096
    assert flops_per_token(s, seq, "prefill") == pytest.approx(
        flops_per_token(s, seq, "train") / 3 - 2 * lm_head + 2 * lm_head / seq)


def test_gqa_changes_the_kv_projections_not_the_attention_term():
    mha = ModelShape.from_config(llama(num_attention_heads=8, num_key_value_heads=8))
    gqa = ModelShape.from_config(llama(num_attention_heads=8, num_key_value_heads=2))
    kv_params_saved = 2 * 64 * (8 - 2) * 8 * mha.num_hidden_layers  # k and v: hidden × (heads - groups) × head_dim
    for seq in (16, 256):
        assert flops_per_token(mha, seq, "train") - flops_per_token(gqa, seq, "train") == 6 * kv_params_saved


def test_mfu_reproduces_nemo_llama3_8b_on_h100():
    # NeMo's Llama-3.1-8B pretraining on H100 (seq 8192): 10,153 tokens/s/GPU at BF16, MFU 59.4%.
    result = model_flops_utilization(shape=shape("llama3-8b"), seq_len=8192, workload="train", precision="bf16",
                                     tokens_per_s=10_153, device_type="cuda", device_name="NVIDIA H100 80GB HBM3")
    assert result.mfu_vs_bf16_peak == pytest.approx(0.594, abs=0.002)
    assert result.mfu_vs_precision_peak == result.mfu_vs_bf16_peak and result.mfu_null_reason is None


def test_fp8_mfu_is_against_both_peaks():
    result = model_flops_utilization(shape=shape("llama3-8b"), seq_len=8192, workload="train",
                                     precision="fp8-delayed", tokens_per_s=13_555, device_type="cuda",
                                     device_name="NVIDIA H200")
    assert result.mfu_vs_bf16_peak == pytest.approx(result.mfu_vs_precision_peak * 1979 / 989)


@pytest.mark.parametrize("name, gpu", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GH200 480GB", None), ("NVIDIA H100 NVL", None), ("NVIDIA H200 NVL", None), ("NVIDIA L40", None),
    ("Tesla V100-SXM2-16GB", None),
])
def test_peak_table_matches_device_names_and_keeps_look_alikes_out(name, gpu):
    peak = peak_for(name)
    assert (peak.gpu if peak else None) == gpu


@pytest.mark.parametrize("device_type, device_name, precision, reason", [
    ("cuda", "Tesla V100-SXM2-16GB", "bf16", "not in the peak table"),
    ("cpu", None, "fp32", "no peak table for cpu devices"),
    ("cuda", "NVIDIA A100-SXM4-80GB", "fp8-current", "A100 has no FP8 tensor cores"),
    ("cuda", "NVIDIA H100 80GB HBM3", "fp32", "no fp32 peak in the table"),
])
def test_unmeasurable_mfu_is_null_with_a_reason(device_type, device_name, precision, reason):
    result = model_flops_utilization(shape=shape("tiny"), seq_len=64, workload="prefill", precision=precision,
                                     tokens_per_s=1000.0, device_type=device_type, device_name=device_name)
    assert reason in result.mfu_null_reason
    assert result.mfu_vs_precision_peak is None
    assert result.flops_per_token > 0

"""HF <-> TE mapping: every key accounted for, TE's fused-QKV row order, bit-exact round trips."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from support import CONFIGS, llama
from teswap.errors import MappingError
from teswap.swap.mapping import hf_to_te_state_dict, te_layer_keys, te_to_hf_state_dict


def hf_state(config) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return LlamaForCausalLM(config).state_dict()


@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
@pytest.mark.parametrize("name", ["gqa", "mha", "mqa", "odd-sizes", "tied-embeddings", "explicit-head-dim"])
def test_round_trip_is_bit_exact_and_covers_every_key(name, fused):
    config = CONFIGS[name]()
    hf = hf_state(config)
    te = hf_to_te_state_dict(hf, config, fuse_qkv_params=fused)
    layer_keys = {k.split(".", 3)[3] for k in te if ".layers." in k}
    assert layer_keys == te_layer_keys(config, fuse_qkv=fused)
    back = te_to_hf_state_dict(te, config)
    assert back.keys() == hf.keys()
    for key in hf:
        assert torch.equal(back[key], hf[key]), key


def test_silu_half_of_fc1_is_the_gate():
    config = llama()
    hf = hf_state(config)
    te = hf_to_te_state_dict(hf, config)
    inter = config.intermediate_size
    fc1 = te["model.layers.1.layernorm_mlp.fc1_weight"]
    assert torch.equal(fc1[:inter], hf["model.layers.1.mlp.gate_proj.weight"])
    assert torch.equal(fc1[inter:], hf["model.layers.1.mlp.up_proj.weight"])


@pytest.mark.parametrize("name", ["gqa", "mha", "mqa"])
def test_fused_rows_follow_te_group_interleaving(name):
    """Row r of TE's fused weight, per MultiheadAttention's [ng, np/ng + 2, hn] view, derived row by row."""
    config = CONFIGS[name]()
    hf = hf_state(config)
    fused = hf_to_te_state_dict(hf, config, fuse_qkv_params=True)["model.layers.0.self_attention.layernorm_qkv.weight"]
    heads, groups = config.num_attention_heads, config.num_key_value_heads
    hn, per_group = config.head_dim, heads // groups
    q, k, v = (hf[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    assert fused.shape[0] == (heads + 2 * groups) * hn
    for r in range(fused.shape[0]):
        block, row = divmod(r, hn)
        group, slot = divmod(block, per_group + 2)
        if slot < per_group:
            expected = q[(group * per_group + slot) * hn + row]
        elif slot == per_group:
            expected = k[group * hn + row]
        else:
            expected = v[group * hn + row]
        assert torch.equal(fused[r], expected), r


def test_unmapped_hf_key_is_named():
    config = llama()
    hf = hf_state(config)
    hf["model.layers.1.self_attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(MappingError, match=r"unmapped model\.layers\.1\.self_attn\.q_norm\.weight"):
        hf_to_te_state_dict(hf, config)


def test_missing_hf_key_is_named():
    config = llama()
    hf = hf_state(config)
    del hf["model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(MappingError, match=r"missing model\.layers\.0\.mlp\.up_proj\.weight"):
        hf_to_te_state_dict(hf, config)


def test_missing_te_key_is_named():
    config = llama()
    te = hf_to_te_state_dict(hf_state(config), config)
    del te["model.layers.1.self_attention.proj.weight"]
    with pytest.raises(MappingError, match=r"missing model\.layers\.1\.self_attention\.proj\.weight"):
        te_to_hf_state_dict(te, config)


def test_missing_layer_is_named():
    config = llama(num_hidden_layers=3)
    hf = {k: v for k, v in hf_state(config).items() if ".layers.2." not in k}
    with pytest.raises(MappingError, match=r"decoder layers \[0, 1\], expected 0\.\.2"):
        hf_to_te_state_dict(hf, config)


def test_extra_state_is_tolerated_and_dropped():
    """TE state dicts carry `_extra_state` (FP8 metadata) on its base modules."""
    config = llama()
    hf = hf_state(config)
    te = hf_to_te_state_dict(hf, config)
    for i in range(config.num_hidden_layers):
        for module in ("self_attention.layernorm_qkv", "self_attention.core_attention",
                       "self_attention.proj", "layernorm_mlp"):
            te[f"model.layers.{i}.{module}._extra_state"] = torch.empty(0, dtype=torch.uint8)
    back = te_to_hf_state_dict(te, config)
    assert back.keys() == hf.keys()

"""Stock vs torch-swapped logits in fp32 across a spread of valid Llama configs, and mutations caught."""

from __future__ import annotations

import pytest
import torch

import teswap.layers.rope
import teswap.swap.mapping
from support import CONFIGS, logits_of, random_ids, rel_max_err
from teswap import build_pair
from teswap.errors import MappingError
from teswap.swap.pair import weight_checksums

TOLERANCE = 1e-5  # relative to max |logit|; TE's fp32 rtol is 1.3e-6 per op


@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fp32_logits_match_stock(name, fused):
    pair = build_pair(CONFIGS[name](), seed=3, fuse_qkv=fused)
    assert pair.weights_equal
    ids = random_ids(pair.config.vocab_size, seq=96)  # past original_max_position_embeddings=64
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= TOLERANCE


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama3"])
def test_presets_match_stock(preset):
    pair = build_pair(preset)
    ids = random_ids(pair.config.vocab_size, seq=128)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= TOLERANCE


def test_swapped_gate_and_up_halves_are_caught():
    from teswap.parity.mutations import gate_up_swapped

    with gate_up_swapped():
        pair = build_pair("tiny")
    ids = random_ids(pair.config.vocab_size)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) > 1e-2


def test_dropped_tensor_is_refused_at_build(monkeypatch):
    original = teswap.swap.mapping.hf_to_te_state_dict

    def drop_one(state_dict, config, **kwargs):
        mapped = original(state_dict, config, **kwargs)
        del mapped["model.layers.1.self_attention.layernorm_qkv.value_weight"]
        return mapped

    monkeypatch.setattr(teswap.swap.pair, "hf_to_te_state_dict", drop_one)
    with pytest.raises(MappingError, match="value_weight"):
        build_pair("tiny")


def test_one_layer_left_random_is_caught_by_checksums_and_logits():
    pair = build_pair("tiny")
    ids = random_ids(pair.config.vocab_size)
    with torch.no_grad():
        torch.nn.init.normal_(pair.swapped.model.layers[1].self_attention.proj.weight, std=0.02)
    sums = weight_checksums(pair.stock, pair.swapped)
    differing = sorted(k for k, (a, b) in sums.items() if a != b)
    assert differing == ["model.layers.1.self_attention.proj.weight"]  # checksums name TE keys
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) > 1e-3


def test_ignoring_rope_theta_and_scaling_is_caught(monkeypatch):
    """TE's example defect: freqs from base 10000 whatever the config says."""
    def default_base_freqs(self, position_ids, seq_len, device):
        head_dim = self.rotary_emb.inv_freq.numel() * 2
        inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
        return torch.cat((angles, angles), dim=-1).reshape(seq_len, 1, 1, -1)

    ids = random_ids(512, seq=96)
    default_rope = build_pair("tiny")
    llama3_rope = build_pair("tiny-llama3")
    monkeypatch.setattr(teswap.layers.rope.RopeTable, "freqs", default_base_freqs)
    # The mutation is harmless where the config really is base 10000 and unscaled ...
    assert rel_max_err(logits_of(default_rope.swapped, ids), logits_of(default_rope.stock, ids)) <= TOLERANCE
    # ... and caught where it is not.
    assert rel_max_err(logits_of(llama3_rope.swapped, ids), logits_of(llama3_rope.stock, ids)) > 1e-3


def test_ignoring_attention_scaling_is_caught(monkeypatch):
    monkeypatch.setattr(teswap.layers.rope.RopeTable, "attention_scaling", property(lambda self: 1.0))
    pair = build_pair(CONFIGS["yarn-attention-scaling"]())
    assert pair.stock.model.rotary_emb.attention_scaling != 1.0
    ids = random_ids(pair.config.vocab_size)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) > 1e-4

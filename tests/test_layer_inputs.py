"""What the swapped layers honour (HF masks, both cache kwarg names, passed-through kwargs, training) and refuse."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from support import llama, logits_of, random_ids, rel_max_err
from teswap import build_pair
from teswap.errors import UnsupportedConfigError, UnsupportedInputError
from teswap.swap.mapping import te_to_hf_state_dict


@pytest.fixture(scope="module")
def pair():
    return build_pair("tiny")


def layer_call(pair, **kwargs):
    layer = pair.swapped.model.layers[0]
    hidden = torch.randn(2, 16, pair.config.hidden_size)
    return layer(hidden, position_ids=torch.arange(16)[None], **kwargs)


@pytest.mark.parametrize("kwarg", ["cache", "past_key_values"])  # transformers 5.24 / 5.17 names
def test_both_cache_names_fill_the_cache(pair, kwarg):
    cache = DynamicCache(config=pair.config)
    assert layer_call(pair, **{kwarg: cache}).shape == (2, 16, pair.config.hidden_size)
    assert cache.get_seq_length() == 16
    assert cache.layers[0].keys.shape == (2, pair.config.num_key_value_heads, 16, pair.config.head_dim)


def test_two_different_caches_are_refused(pair):
    with pytest.raises(UnsupportedInputError, match="two different caches"):
        layer_call(pair, cache=DynamicCache(config=pair.config), past_key_values=DynamicCache(config=pair.config))


def test_all_ones_attention_mask_matches_stock(pair):
    ids = random_ids(pair.config.vocab_size)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        swapped = pair.swapped(ids, attention_mask=mask).logits
        stock = pair.stock(ids, attention_mask=mask).logits
    assert rel_max_err(swapped, stock) <= 1e-5


def test_padding_mask_matches_stock_on_real_tokens(pair):
    ids = random_ids(pair.config.vocab_size)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        swapped = pair.swapped(ids, attention_mask=mask).logits
        stock = pair.stock(ids, attention_mask=mask).logits
    assert rel_max_err(swapped[mask.bool()], stock[mask.bool()]) <= 1e-5


def test_eager_causal_float_mask_is_accepted():
    """Eager attention always materialises an additive causal mask; the twin adds it as eager does."""
    config = llama()
    config._attn_implementation = "eager"
    pair = build_pair(config)
    pair.swapped.config._attn_implementation = "eager"
    ids = random_ids(config.vocab_size)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= 1e-5


@pytest.mark.parametrize("kwargs, message", [
    ({"is_causal": False}, "bidirectional"),
    ({"output_router_logits": True}, "no router"),
    ({"some_new_flag": 3}, "some_new_flag=3"),
    ({"cu_seq_lens_q": torch.tensor([0, 8, 16])}, "cu_seq_lens_q and cu_seq_lens_k"),
    ({"attention_mask": torch.ones(2, 16, dtype=torch.bool)}, "4D mask"),
])
def test_what_a_layer_cannot_honour_is_refused_by_name(pair, kwargs, message):
    with pytest.raises(UnsupportedInputError, match=message):
        layer_call(pair, **kwargs)


def test_passed_through_kwargs_change_nothing(pair):
    hidden = torch.randn(2, 16, pair.config.hidden_size)
    layer = pair.swapped.model.layers[0]
    with torch.no_grad():
        plain = layer(hidden)
        noisy = layer(hidden, num_items_in_batch=torch.tensor(3), output_hidden_states=True, cache_position=None,
                      output_attentions=False, is_causal=True, use_cache=False)
    assert torch.equal(plain, noisy)


@pytest.mark.parametrize("override, message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_configs_the_layer_cannot_express_are_refused(override, message):
    with pytest.raises(UnsupportedConfigError, match=message):
        build_pair(llama(**override))


def test_greedy_generation_matches_without_cache(pair):
    prompt = random_ids(pair.config.vocab_size, batch=1, seq=8)
    kwargs = dict(max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(pair.swapped.generate(prompt, **kwargs), pair.stock.generate(prompt, **kwargs))


def test_training_gradients_map_back_to_stock_gradients():
    """One backward on the same batch; TE-layout grads (incl. split-QKV views) map to HF grads."""
    pair = build_pair("tiny")
    ids = random_ids(pair.config.vocab_size)
    for model in (pair.stock, pair.swapped):
        model.train()
        model(ids, labels=ids).loss.backward()
    swapped_grads = {n: p.grad for n, p in pair.swapped.named_parameters()}
    mapped = te_to_hf_state_dict(swapped_grads, pair.config)
    for name, param in pair.stock.named_parameters():
        assert rel_max_err(mapped[name], param.grad) <= 1e-4, name


def test_dtype_cast_after_build_keeps_parity():
    """.to() re-allocates the split q/k/v views; the fused GEMM weight must follow them."""
    pair = build_pair("tiny")
    stock, swapped = pair.stock.to(torch.float64), pair.swapped.to(torch.float64)
    ids = random_ids(pair.config.vocab_size)
    # Not 1e-12: HF's LlamaRMSNorm normalises in fp32 even in an fp64 model; ours keeps fp64.
    assert rel_max_err(logits_of(swapped, ids), logits_of(stock, ids)) <= 1e-6
    with torch.no_grad():  # an in-place update through the parameter reaches the GEMM
        swapped.model.layers[0].self_attention.layernorm_qkv.key_weight.mul_(2)
    assert rel_max_err(logits_of(swapped, ids), logits_of(stock, ids)) > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients():
    pair = build_pair("tiny")
    ids = random_ids(pair.config.vocab_size)
    grads = []
    for checkpointing in (False, True):
        model = build_pair("tiny").swapped if checkpointing else pair.swapped
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].layernorm_mlp.fc1_weight.grad.clone())
    assert rel_max_err(grads[1], grads[0]) <= 1e-6

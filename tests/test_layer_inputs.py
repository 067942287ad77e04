"""What the swapped layers honour (masks equal to causal, both cache kwarg names, training) and refuse."""

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


def test_use_cache_is_refused_with_advice(pair):
    ids = random_ids(pair.config.vocab_size)
    with pytest.raises(UnsupportedInputError, match="use_cache=False"):
        pair.swapped(ids, use_cache=True)


@pytest.mark.parametrize("kwarg", ["cache", "past_key_values"])
def test_both_cache_names_are_accepted_empty_and_refused_full(pair, kwarg):
    assert layer_call(pair, **{kwarg: None}).shape == (2, 16, pair.config.hidden_size)
    with pytest.raises(UnsupportedInputError, match="no KV cache"):
        layer_call(pair, **{kwarg: DynamicCache(config=pair.config)})


def test_all_ones_attention_mask_matches_stock(pair):
    ids = random_ids(pair.config.vocab_size)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        swapped = pair.swapped(ids, attention_mask=mask).logits
        stock = pair.stock(ids, attention_mask=mask).logits
    assert rel_max_err(swapped, stock) <= 1e-5


def test_padding_mask_is_refused(pair):
    ids = random_ids(pair.config.vocab_size)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with pytest.raises(UnsupportedInputError, match="padding attention masks"):
        pair.swapped(ids, attention_mask=mask)


def test_eager_causal_float_mask_is_accepted():
    """Eager attention always materialises an additive causal mask; it is plain causal, so accepted."""
    config = llama()
    config._attn_implementation = "eager"
    pair = build_pair(config)
    pair.swapped.config._attn_implementation = "eager"
    ids = random_ids(config.vocab_size)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= 1e-5


def test_per_row_position_ids_are_refused_and_equal_rows_accepted(pair):
    ids = random_ids(pair.config.vocab_size, seq=16)
    same = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        assert rel_max_err(pair.swapped(ids, position_ids=same).logits,
                           pair.stock(ids, position_ids=same).logits) <= 1e-5
    shifted = torch.stack([torch.arange(16), torch.arange(16) + 3])
    with pytest.raises(UnsupportedInputError, match="per-row position_ids"):
        pair.swapped(ids, position_ids=shifted)


def test_packed_sequence_kwargs_are_refused(pair):
    with pytest.raises(UnsupportedInputError, match="packed sequences"):
        layer_call(pair, cu_seq_lens_q=torch.tensor([0, 8, 16]))


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

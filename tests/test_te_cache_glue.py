"""Our bridge from HF's generate(), masks and positions to TE's InferenceParams and padding_causal, on CPU.

Through the TE stand-in (te_standin.py): it emulates what TE's source says TE does with these
arguments — bshd padding read as row lengths (real tokens first), KV appended by InferenceParams.step,
RoPE offset per row by the pre-step lengths, one token per row after the prompt — and computes with
the twin. Passing here says our glue drives TE's KV-cache API as TE declares it; it says nothing
about TE's kernels, and no number here is a TE number.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import te_standin
from support import llama, random_ids, rel_max_err
from teswap import build_pair
from teswap.errors import UnsupportedInputError
from teswap.hardware.probe import Availability
from teswap.layers.backends import BACKENDS
from teswap.layers.te_cache import TEKVCache
from teswap.parity.hf_checks import cache_kwarg, pad_rows, padded_batch_parity


@pytest.fixture
def pair(monkeypatch):
    te_standin.install(monkeypatch)
    monkeypatch.setitem(BACKENDS, "te", dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True)))
    return build_pair(llama(), backend="te", seed=4)


def left_padded(vocab):
    rows = [random_ids(vocab, batch=1, seq=n, seed=n)[0] for n in (4, 9, 6)]
    ids, mask, _ = pad_rows(rows, pad_id=0, side="left")
    return rows, ids, mask


def generate_both(pair, ids, **kwargs):
    kwargs = {"max_new_tokens": 5, "pad_token_id": 0, **kwargs}
    torch.manual_seed(3)
    stock = pair.stock.generate(ids, **kwargs)
    torch.manual_seed(3)
    return stock, pair.swapped.generate(ids, **kwargs)


@pytest.mark.parametrize("mode", [
    {"do_sample": False}, {"do_sample": True, "top_k": 40}, {"do_sample": False, "num_beams": 3},
], ids=["greedy", "seeded-sampling", "beam-search"])
def test_cached_generation_through_tes_kv_cache_gives_stocks_tokens(pair, mode):
    _, ids, mask = left_padded(pair.config.vocab_size)
    stock, swapped = generate_both(pair, ids, attention_mask=mask, **mode)
    assert torch.equal(swapped, stock)
    params = te_standin.INFERENCE_PARAMS_MADE[-1]
    rows = ids.shape[0] * mode.get("num_beams", 1)
    assert params.init_kwargs["max_batch_size"] == rows and params.init_kwargs["is_paged"] is False
    assert set(params.cache_manager.cache) == {1, 2}  # keyed by layer_number = layer_idx + 1
    lengths = [n for n in (4, 9, 6) for _ in range(mode.get("num_beams", 1))]
    assert params.steps[0] == dict(enumerate(lengths))  # the prompt: each row's REAL tokens
    assert all(step == dict.fromkeys(range(rows), 1) for step in params.steps[1:])
    assert len(params.steps) == 5


def test_the_layers_pass_tes_cache_arguments(pair):
    _, ids, mask = left_padded(pair.config.vocab_size)
    pair.swapped.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    prompt_call, decode_call = pair.swapped.model.layers[1].forward_calls[-2:]
    assert prompt_call["self_attn_mask_type"] == "padding_causal" and decode_call["self_attn_mask_type"] == "padding"
    assert prompt_call["inference_params"] is decode_call["inference_params"] is te_standin.INFERENCE_PARAMS_MADE[-1]
    assert decode_call["rotary_pos_emb"].shape[0] >= 9 + 2  # TE offsets one table per row itself


def test_padded_forward_through_padding_causal_equals_each_row_alone(pair):
    rows, ids, mask = left_padded(pair.config.vocab_size)
    assert padded_batch_parity(pair.swapped, rows, side="left")["robust_rel"] <= 1e-5
    assert padded_batch_parity(pair.swapped, rows, side="right")["robust_rel"] <= 1e-5
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        pair.swapped(ids, attention_mask=mask, position_ids=positions, use_cache=False)
        swapped = pair.swapped(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        stock = pair.stock(ids, attention_mask=mask, position_ids=positions).logits
    call = pair.swapped.model.layers[0].forward_calls[-1]
    assert call["self_attn_mask_type"] == "padding_causal"
    assert call["attention_mask"].shape == (3, 1, 1, 9) and call["attention_mask"].dtype == torch.bool
    assert call["attention_mask"].sum(-1).flatten().tolist() == [5, 0, 3]  # True = masked out, at the END
    assert rel_max_err(swapped[mask.bool()], stock[mask.bool()]) <= 1e-5


def test_a_long_generation_needs_a_larger_cache_and_gets_one(pair):
    ids = random_ids(pair.config.vocab_size, batch=1, seq=6)
    name = cache_kwarg(pair.swapped)  # cache= (transformers 5.24) or past_key_values= (5.17)
    with pytest.raises(UnsupportedInputError, match="allocated for 8"):
        pair.swapped.generate(ids, **{name: TEKVCache(pair.config, max_sequence_length=8)},
                              max_new_tokens=5, do_sample=False, pad_token_id=0)
    cache = TEKVCache(pair.config, max_sequence_length=16)
    stock, swapped = generate_both(pair, ids, do_sample=False)
    own = pair.swapped.generate(ids, **{name: cache}, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(own, stock) and torch.equal(swapped, stock)
    assert cache.get_seq_length() == 6 + 4


@pytest.mark.parametrize("kwargs, message", [
    ({"cu_seq_lens_q": torch.tensor([0, 4, 8]), "cu_seq_lens_k": torch.tensor([0, 4, 8])}, "attn_input_format"),
    ({"attention_mask": "left-padded"}, "per-row position_ids"),
    ({"position_ids": torch.stack([torch.arange(8), torch.arange(8) + 2])}, "one table for all rows"),
])
def test_what_te_cannot_express_is_refused_by_name(pair, kwargs, message):
    ids = random_ids(pair.config.vocab_size, batch=2 if "position_ids" in kwargs else 1, seq=8)
    if kwargs.get("attention_mask") == "left-padded":
        ids = random_ids(pair.config.vocab_size, batch=2, seq=8)
        kwargs = {"attention_mask": torch.tensor([[0, 0] + [1] * 6, [1] * 8])}
    with pytest.raises(UnsupportedInputError, match=message):
        pair.swapped(ids, use_cache=False, **kwargs)


def test_a_static_or_filled_hf_cache_is_refused(pair):
    ids = random_ids(pair.config.vocab_size, batch=1, seq=6)
    with pytest.raises(UnsupportedInputError, match="TransformerEngine's own cache"):
        pair.swapped.generate(ids, cache_implementation="static", max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_a_training_forward_runs_without_tes_inference_only_cache(pair):
    """LlamaModel makes a cache even when training; TE's cache would cut the gradient, so it is not used."""
    ids = random_ids(pair.config.vocab_size, batch=2, seq=8)
    pair.swapped.train()
    out = pair.swapped(ids, labels=ids)  # config.use_cache is on, as in stock
    out.loss.backward()
    pair.swapped.eval()
    assert pair.swapped.model.layers[0].self_attention.layernorm_qkv.query_weight.grad is not None
    assert pair.swapped.model.layers[0].forward_calls[-1].get("inference_params") is None
    with pytest.raises(UnsupportedInputError, match="gradients enabled"), torch.no_grad():
        pair.swapped(ids[:, :1], **{cache_kwarg(pair.swapped): out.cache if hasattr(out, "cache") else
                                    out.past_key_values})


def test_hidden_states_are_recorded_from_the_te_layers(pair):
    ids = random_ids(pair.config.vocab_size, batch=2, seq=8)
    with torch.no_grad():
        swapped = pair.swapped(ids, output_hidden_states=True, use_cache=False).hidden_states
        stock = pair.stock(ids, output_hidden_states=True).hidden_states
    assert len(swapped) == pair.config.num_hidden_layers + 1
    assert all(rel_max_err(ours, theirs) <= 1e-5 for ours, theirs in zip(swapped, stock, strict=True))
    assert pair.swapped._no_split_modules == {"TELlamaDecoderLayer"}

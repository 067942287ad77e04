"""The swapped model (torch backend) driven through HF's own machinery, as users' code drives it, for
every family (each one's tiny preset: windows of 16 tokens, biases, q/k norms, a composite).

generate() with a KV cache (dynamic, static; greedy, sampling, beam search; past the window),
left-padded batches, padded forwards, per-row positions, hidden-state outputs, a Trainer step with its
loss kwargs, gradient checkpointing, save/load, torch.compile(fullgraph=True), and HF's model-level
metadata. Each compares against the stock model on identical weights (fp32, tiny config) or asserts a
refusal.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from support import (
    FAMILY_NAMES,
    FAMILY_PRESETS,
    TorchLlamaDecoderLayer,
    TorchLlamaDecoderLayerFusedQKV,
    family_config,
    llama,
    random_ids,
    rel_max_err,
)
from teswap import FAMILIES, build_pair, decoder_class, replace_decoder
from teswap.errors import UnsupportedConfigError, UnsupportedInputError
from teswap.layers.rope import bind_rope
from teswap.parity.hf_checks import decode_cache_parity, decode_swapped_vs_stock, pad_rows, padded_batch_parity
from teswap.swap.metadata import refuse_tensor_parallel


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def pair(request):
    return build_pair(FAMILY_PRESETS[request.param], seed=3)


family = pytest.mark.parametrize("family", FAMILY_NAMES)


def left_padded(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [random_ids(vocab, batch=1, seq=n, seed=n)[0] for n in (4, 9, 6)]
    ids, mask, _ = pad_rows(rows, pad_id=0, side="left")
    return ids, mask


def generate_both(pair, ids, **kwargs):
    kwargs = {"max_new_tokens": 12, "pad_token_id": 0, **kwargs}  # 7 + 12 tokens: past a 16-token window
    torch.manual_seed(11)
    stock = pair.stock.generate(ids, **kwargs)
    torch.manual_seed(11)
    return stock, pair.swapped.generate(ids, **kwargs)


@pytest.mark.parametrize("mode", [
    {"do_sample": False},
    {"do_sample": True, "top_k": 50, "temperature": 1.3},
    {"do_sample": False, "num_beams": 3},
    {"do_sample": False, "cache_implementation": "static"},
], ids=["greedy", "seeded-sampling", "beam-search", "static-cache"])
def test_cached_generation_gives_stocks_tokens(pair, mode):
    ids = random_ids(pair.config.vocab_size, batch=2, seq=7)
    stock, swapped = generate_both(pair, ids, use_cache=True, **mode)
    assert torch.equal(swapped, stock)
    if pair.family == "llama" and mode.get("num_beams") is None and mode.get("cache_implementation") is None:
        uncached = generate_both(pair, ids, use_cache=False, **mode)[1]
        assert torch.equal(uncached, swapped)


def test_left_padded_batched_generation_gives_stocks_tokens(pair):
    ids, mask = left_padded(pair.config.vocab_size)
    stock, swapped = generate_both(pair, ids, attention_mask=mask, do_sample=False)
    assert torch.equal(swapped, stock)
    alone = pair.swapped.generate(ids[1:2], attention_mask=mask[1:2], max_new_tokens=12, do_sample=False,
                                  pad_token_id=0)
    assert torch.equal(swapped[1], alone[0])  # the longest row is unpadded: batching changed nothing


def test_decode_parity_checks(pair):
    prompt = random_ids(pair.config.vocab_size, batch=2, seq=6)
    own = decode_cache_parity(pair.swapped, prompt, 5)
    assert own["robust_rel"] <= 1e-5 and own["greedy_equal"] == 1.0
    versus = decode_swapped_vs_stock(pair.stock, pair.swapped, prompt, 5)
    assert versus["robust_rel"] <= 1e-5 and versus["prefix_match_rate"] == 1.0


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_forward_equals_each_row_alone(pair, side):
    rows = [random_ids(pair.config.vocab_size, batch=1, seq=n, seed=n)[0] for n in (3, 10, 6)]
    metrics = padded_batch_parity(pair.swapped, rows, side=side)
    assert metrics["robust_rel"] <= 1e-5 and metrics["pad_fraction"] > 0.3
    if side == "left":  # right pads come after every real token, so causal attention never sees them
        ids, mask, positions = pad_rows(rows, 0, side)
        with torch.no_grad():
            ignored = pair.swapped(ids, position_ids=positions).logits  # the mask left out: rows see pads
            alone = pair.swapped(rows[0][None]).logits[0]
        assert rel_max_err(ignored[0, mask[0].bool()], alone) > 1e-3  # so the check above can fail


@family
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])  # bool mask; eager: additive float mask
def test_padded_forward_matches_stock_per_implementation(implementation, family):
    pair = build_pair(FAMILY_PRESETS[family])
    for model in (pair.stock, pair.swapped):
        model.config._attn_implementation = implementation
    ids, mask = left_padded(pair.config.vocab_size)
    with torch.no_grad():
        stock = pair.stock(ids, attention_mask=mask).logits
        swapped = pair.swapped(ids, attention_mask=mask).logits
    assert rel_max_err(swapped[mask.bool()], stock[mask.bool()]) <= 1e-5


def test_per_row_position_ids_match_stock(pair):
    ids = random_ids(pair.config.vocab_size, batch=2, seq=12)
    positions = torch.stack([torch.arange(12), torch.arange(12) + 5])
    with torch.no_grad():
        swapped = pair.swapped(ids, position_ids=positions).logits
        stock = pair.stock(ids, position_ids=positions).logits
    assert rel_max_err(swapped, stock) <= 1e-5


def test_hidden_states_are_every_layers_output(pair):
    ids = random_ids(pair.config.vocab_size, batch=2, seq=8)
    with torch.no_grad():
        swapped = pair.swapped(ids, output_hidden_states=True).hidden_states
        stock = pair.stock(ids, output_hidden_states=True).hidden_states
    assert len(swapped) == len(stock) == pair.config.num_hidden_layers + 1
    for ours, theirs in zip(swapped, stock, strict=True):
        assert rel_max_err(ours, theirs) <= 1e-5
    assert pair.stock(ids, output_hidden_states=True).hidden_states is not None  # stock still records


def test_attention_probabilities_are_refused_not_returned_empty(pair):
    ids = random_ids(pair.config.vocab_size, batch=1, seq=4)
    with pytest.raises(UnsupportedInputError, match="output_attentions=True.*attention probabilities"):
        pair.swapped(ids, output_attentions=True)
    pair.swapped.config._attn_implementation = "eager"  # HF allows the config flag only under eager
    pair.swapped.config.output_attentions = True
    try:
        with pytest.raises(UnsupportedInputError, match="set in the config"):
            pair.swapped(ids)
    finally:
        pair.swapped.config.output_attentions = False
        pair.swapped.config._attn_implementation = "sdpa"


def test_loss_kwargs_the_trainer_passes_reach_the_loss(pair):
    ids = random_ids(pair.config.vocab_size, batch=2, seq=10)
    shifted = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)
    kwargs = {"num_items_in_batch": torch.tensor(7), "shift_labels": shifted}
    with torch.no_grad():
        swapped = pair.swapped(ids, labels=ids, **kwargs).loss
        stock = pair.stock(ids, labels=ids, **kwargs).loss
        plain = pair.stock(ids, labels=ids).loss
    assert abs(float(swapped) - float(stock)) <= 1e-5
    assert abs(float(stock) - float(plain)) > 1e-3  # num_items_in_batch really changed the loss


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])  # plain, frozen TE-only biases, composite
def test_a_real_trainer_step_trains_the_swapped_model(tmp_path, family):
    from transformers import Trainer, TrainingArguments

    pair = build_pair(FAMILY_PRESETS[family], seed=5)
    ids = random_ids(pair.config.vocab_size, batch=4, seq=12)
    data = [{"input_ids": row, "labels": row, "attention_mask": torch.ones_like(row)} for row in ids]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=1e-2, report_to=[], save_strategy="no",
                             use_cpu=True, logging_steps=1, disable_tqdm=True, dataloader_pin_memory=False)
    before = pair.swapped.model.layers[0].layernorm_mlp.fc1_weight.detach().clone()
    trainer = Trainer(model=pair.swapped, args=args, train_dataset=data)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, pair.swapped.model.layers[0].layernorm_mlp.fc1_weight)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3_text"])  # plain, windowed, composite
def test_gradient_checkpointing_on_a_padded_batch_gives_the_same_gradients(family):
    ids, mask = left_padded(256)
    grads = []
    for checkpointing in (False, True):
        model = build_pair(family_config(family), seed=2).swapped.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False).loss.backward()
        grads.append(model.model.layers[0].self_attention.layernorm_qkv.query_weight.grad.clone())
    assert rel_max_err(grads[1], grads[0]) <= 1e-6


def test_save_and_load_round_trip(tmp_path, pair):
    pair.swapped.save_pretrained(tmp_path)
    with replace_decoder(decoder_class(pair.family)):
        loaded = FAMILIES[pair.family].causal_lm_class().from_pretrained(tmp_path).eval()
    bind_rope(loaded)
    ids, mask = left_padded(pair.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, pair.swapped(ids, attention_mask=mask).logits)


@family
def test_compiles_with_fullgraph_on_a_padded_batch(family):
    """Graph capture is what is under test (no host syncs, no breaks): dynamo's eager backend, fast on CPU."""
    torch._dynamo.reset()
    pair = build_pair(family_config(family, num_hidden_layers=1))
    ids, mask = left_padded(pair.config.vocab_size)
    compiled = torch.compile(pair.swapped, fullgraph=True, backend="eager")
    with torch.no_grad():
        traced = compiled(ids, attention_mask=mask, use_cache=False).logits
        stock = pair.stock(ids, attention_mask=mask, use_cache=False).logits
    assert rel_max_err(traced[mask.bool()], stock[mask.bool()]) <= 1e-5


def test_packed_sequences_honour_their_boundaries(pair):
    """HF's flash-attention packing kwargs: one row of three sequences equals each sequence alone."""
    lengths = (3, 5, 4)
    rows = [random_ids(pair.config.vocab_size, batch=1, seq=n, seed=n)[0] for n in lengths]
    packed = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, 3, 8, 12], dtype=torch.int32)
    with torch.no_grad():
        out = pair.swapped(packed, position_ids=positions, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=5,
                           max_length_k=5, use_cache=False).logits[0]
        alone = torch.cat([pair.stock(row[None]).logits[0] for row in rows])
    assert rel_max_err(out, alone) <= 1e-5


def test_hf_metadata_names_the_swapped_layers(pair):
    name = decoder_class(pair.family).__name__
    assert pair.swapped._no_split_modules == {name}
    assert pair.swapped.model._no_split_modules == {name}
    assert not pair.swapped.supports_tp_plan and pair.stock.supports_tp_plan
    assert type(pair.stock.model).__name__ == type(pair.swapped.model).__name__ == FAMILIES[pair.family].hf.base_model
    with pytest.raises(UnsupportedConfigError, match="tensor-parallel plans are not supported"):
        refuse_tensor_parallel("auto")


@pytest.mark.parametrize("decoder", [TorchLlamaDecoderLayer, TorchLlamaDecoderLayerFusedQKV])
def test_fresh_weights_follow_initializer_range(decoder):
    torch.manual_seed(0)
    with replace_decoder(decoder):
        model = LlamaForCausalLM(llama(initializer_range=0.3, hidden_size=128, intermediate_size=256))
    attention = model.model.layers[0].self_attention
    qkv = attention.layernorm_qkv.weight if decoder.fuse_qkv_params else attention.layernorm_qkv.query_weight
    for weight in (qkv, attention.proj.weight, model.model.layers[0].layernorm_mlp.fc2_weight):
        assert weight.std().item() == pytest.approx(0.3, rel=0.1)  # not HF's "LayerNorm" ones, not TE's 0.023
    assert torch.equal(attention.layernorm_qkv.layer_norm_weight, torch.ones(128))

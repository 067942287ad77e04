"""build_pair: one seed, identical weights proven by checksums, every kind of source."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama

from support import TorchLlamaDecoderLayer, llama, logits_of, random_ids, rel_max_err
from teswap import build_pair, replace_decoder
from teswap.errors import SourceError, TeswapError
from teswap.swap.presets import PRESETS


def test_weights_equal_and_checksums_cover_every_swapped_tensor():
    pair = build_pair("tiny")
    assert pair.weights_equal
    assert pair.checksums.keys() == pair.swapped.state_dict().keys()  # in TE's layout
    assert all(stock == swapped for stock, swapped in pair.checksums.values())
    assert {type(layer) for layer in pair.stock.model.layers} == {modeling_llama.LlamaDecoderLayer}
    assert {type(layer) for layer in pair.swapped.model.layers} == {TorchLlamaDecoderLayer}
    assert not pair.stock.training and not pair.swapped.training


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_pair("tiny", seed=7), build_pair("tiny", seed=7), build_pair("tiny", seed=8)
    assert a.checksums == b.checksums
    assert a.checksums != c.checksums


def test_swapped_model_gets_no_per_layer_rope_tables_or_extra_tensors():
    pair = build_pair("tiny-llama3")
    tables = {id(layer.rope) for layer in pair.swapped.model.layers}
    assert len(tables) == 1
    assert pair.swapped.model.layers[0].rope.rotary_emb is pair.swapped.model.rotary_emb
    stock_numel = sum(t.numel() for t in pair.stock.state_dict().values())
    swapped_numel = sum(t.numel() for t in pair.swapped.state_dict().values())
    assert swapped_numel == stock_numel
    assert [n for n, _ in pair.swapped.named_buffers() if ".layers." in n] == []


def test_swapped_config_keeps_stocks_cache_setting_and_sdpa():
    pair = build_pair("tiny")
    assert pair.swapped.config.use_cache is pair.stock.config.use_cache is True
    assert pair.swapped.config._attn_implementation == "sdpa"


def test_config_source_is_not_mutated():
    config = llama()
    build_pair(config, dtype=torch.bfloat16)
    assert config.dtype is None and config.use_cache is True


def test_directory_with_config_only_builds_from_the_seed(tmp_path):
    llama().save_pretrained(tmp_path)
    from_dir, from_config = build_pair(tmp_path, seed=5), build_pair(llama(), seed=5)
    assert from_dir.checksums == from_config.checksums


def test_directory_with_safetensors_loads_those_weights(tmp_path):
    torch.manual_seed(123)
    saved = LlamaForCausalLM(llama()).eval()
    saved.save_pretrained(tmp_path)
    assert any(tmp_path.glob("*.safetensors"))
    pair = build_pair(tmp_path, seed=0)
    assert pair.weights_equal
    for key, tensor in saved.state_dict().items():
        assert torch.equal(pair.stock.state_dict()[key], tensor), key
    ids = random_ids(pair.config.vocab_size)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(saved, ids)) <= 1e-5


@pytest.mark.parametrize("source, message", [
    ("llama-42b", "unknown model source 'llama-42b'"),
    ("/nonexistent/dir", "unknown model source"),
])
def test_bad_sources_are_one_clear_error(source, message):
    with pytest.raises(SourceError, match=message):
        build_pair(source)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(SourceError, match="no config.json"):
        build_pair(tmp_path)


def test_other_model_types_are_refused_by_name():
    from transformers import GPT2Config

    with pytest.raises(SourceError, match="model_type 'gpt2' is not supported"):
        build_pair(GPT2Config())


def test_build_pair_inside_a_swap_is_refused():
    with replace_decoder(TorchLlamaDecoderLayer), pytest.raises(TeswapError, match="inside replace_decoder"):
        build_pair("tiny")


def test_bf16_build_has_bf16_weights_on_both_sides():
    pair = build_pair("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in pair.stock.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in pair.swapped.parameters()} == {torch.bfloat16}
    assert pair.weights_equal


def test_gpu_presets_have_the_published_shapes():
    """Parameter counts of the real-shape presets, without allocating them (meta device)."""
    expected = {"llama2-7b": 6_738_415_616, "llama3-8b": 8_030_261_248, "llama3.2-1b": 1_235_814_400}
    for name, count in expected.items():
        with torch.device("meta"):
            model = LlamaForCausalLM(PRESETS[name]())
        unique = {id(p): p.numel() for p in model.parameters()}
        assert sum(unique.values()) == count, name

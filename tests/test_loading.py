"""`from_pretrained` inside `replace_decoder`: stock checkpoints land in the TE layout, or loading fails.

The seed's own pattern (TE's te_llama example) used to leave every TE-layout weight uninitialised
(listed as MISSING in transformers' load report) and the RoPE table on the meta device.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from support import TorchLlamaDecoderLayer, TorchLlamaDecoderLayerFusedQKV, llama, random_ids
from teswap import replace_decoder
from teswap.errors import MappingError
from teswap.parity.mutations import gate_up_swapped
from teswap.swap.presets import tiny_llama3

LAYERS = (TorchLlamaDecoderLayer, TorchLlamaDecoderLayerFusedQKV)


@torch.no_grad()
def logits_of(model, ids):
    return model(ids, use_cache=False).logits


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A stock Llama-3-style checkpoint (GQA 4:1, head_dim 48, llama3 rope, tied) and the model itself."""
    torch.manual_seed(3)
    stock = LlamaForCausalLM(tiny_llama3()).eval()
    directory = tmp_path_factory.mktemp("stock")
    stock.save_pretrained(directory)
    return stock, directory


def load_swapped(directory, layer=TorchLlamaDecoderLayer):
    with replace_decoder(layer):
        return LlamaForCausalLM.from_pretrained(directory, local_files_only=True)


@pytest.mark.parametrize("layer", LAYERS, ids=["split-qkv", "fused-qkv"])
def test_stock_checkpoint_loads_into_the_te_layout_with_stock_logits(checkpoint, layer):
    stock, directory = checkpoint
    model = load_swapped(directory, layer)
    assert {type(m) for m in model.model.layers} == {layer}
    ids = random_ids(stock.config.vocab_size)
    assert torch.equal(logits_of(model, ids), logits_of(stock, ids))
    # RoPE bound to the model's own rotary module, not a table left on the meta device
    assert model.model.layers[0].rope.rotary_emb is model.model.rotary_emb


@pytest.mark.parametrize("layer", LAYERS, ids=["split-qkv", "fused-qkv"])
def test_save_inside_the_swap_writes_a_stock_checkpoint(checkpoint, layer, tmp_path):
    stock, directory = checkpoint
    model = load_swapped(directory, layer)
    with replace_decoder(layer):
        model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert saved.keys() == load_file(directory / "model.safetensors").keys()
    back = LlamaForCausalLM.from_pretrained(tmp_path).eval()  # a plain stock model
    ids = random_ids(stock.config.vocab_size)
    assert torch.equal(logits_of(back, ids), logits_of(stock, ids))


def test_a_weight_missing_from_the_checkpoint_fails_the_load(checkpoint, tmp_path):
    stock, directory = checkpoint
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.layers.1.self_attn.o_proj.weight"]
    stock.config.save_pretrained(tmp_path)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MappingError, match="swapped layer 1: self_attention.proj.weight"):
        load_swapped(tmp_path)


def test_a_layer_key_the_te_layout_cannot_hold_fails_the_load(checkpoint, tmp_path):
    stock, directory = checkpoint
    tensors = load_file(directory / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(4 * 48)
    stock.config.save_pretrained(tmp_path)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="conversion of the weights"):
        load_swapped(tmp_path)


def test_mapping_is_registered_only_inside_the_swap(checkpoint):
    _, directory = checkpoint
    before = get_checkpoint_conversion_mapping("llama")
    with replace_decoder(TorchLlamaDecoderLayer):
        assert get_checkpoint_conversion_mapping("llama")
    assert get_checkpoint_conversion_mapping("llama") == before
    plain = LlamaForCausalLM.from_pretrained(directory)  # stock loading is untouched afterwards
    assert type(plain.model.layers[0]).__name__ == "LlamaDecoderLayer"


def test_gate_up_halves_swapped_in_the_mapping_changes_the_logits(checkpoint):
    """Mutation: the from_pretrained path uses the family's one set of rules, so a wrong fc1 order shows."""
    stock, directory = checkpoint
    with gate_up_swapped():
        model = load_swapped(directory)
    ids = random_ids(stock.config.vocab_size)
    assert not torch.allclose(logits_of(model, ids), logits_of(stock, ids), atol=1e-3)


def test_fresh_build_under_the_swap_is_not_checked_as_a_load():
    with replace_decoder(TorchLlamaDecoderLayer):
        model = LlamaForCausalLM(llama())
    model.eval()  # no checkpoint: nothing to check, nothing raised
    assert logits_of(model, random_ids(256)).isfinite().all()


def test_smollm2_from_pretrained_under_the_swap_equals_stock(smollm2):
    stock = LlamaForCausalLM.from_pretrained(smollm2.weights_dir, local_files_only=True).eval()
    model = load_swapped(smollm2.weights_dir)
    ids = smollm2.load_tokenizer()("Swapping decoder layers must not change a trained model.",
                                   return_tensors="pt").input_ids
    assert torch.equal(logits_of(model, ids), logits_of(stock, ids))

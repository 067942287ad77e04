"""Every family on the twin: the same model as stock at fp32, every HF model class under the swap (built
with classes imported before it, saved and loaded, whatever its base model is called), windows crossed,
refusals named, and each family's faults caught. Parity verdicts per family: test_family_parity.py."""

from __future__ import annotations

import pytest
import torch
import transformers

from support import FAMILY_NAMES, FAMILY_PRESETS, family_config, random_ids, rel_max_err
from teswap import FAMILIES, build_pair, decoder_class, replace_decoder
from teswap.errors import SourceError, UnsupportedConfigError
from teswap.families import family_for_config
from teswap.parity.mutations import MUTATIONS, applies_to, mutation

SEQ = 48  # crosses every tiny preset's 16-token window


@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_swapped_equals_stock_at_fp32_past_the_window(family, fused):
    pair = build_pair(FAMILY_PRESETS[family], fuse_qkv=fused)
    assert pair.weights_equal and pair.family == family
    ids = random_ids(pair.config.vocab_size, seq=SEQ)
    with torch.no_grad():
        stock = pair.stock(ids, output_hidden_states=True)
        swapped = pair.swapped(ids, output_hidden_states=True)
    assert rel_max_err(swapped.logits, stock.logits) <= 1e-5
    assert len(swapped.hidden_states) == len(stock.hidden_states) == pair.config.num_hidden_layers + 1
    for ours, theirs in zip(swapped.hidden_states, stock.hidden_states, strict=True):
        assert rel_max_err(ours, theirs) <= 1e-5


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_greedy_decoding_past_the_window_gives_stocks_tokens(family):
    """30 tokens after a 10-token prompt: HF's sliding caches keep window - 1 keys, the twin reads them."""
    pair = build_pair(FAMILY_PRESETS[family], seed=4)
    prompt = random_ids(pair.config.vocab_size, batch=2, seq=10, seed=3)
    kwargs = {"max_new_tokens": 30, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(pair.swapped.generate(prompt, **kwargs), pair.stock.generate(prompt, **kwargs))


def _outputs(model, ids):
    with torch.no_grad():
        out = model(ids)
    return next(getattr(out, name) for name in ("logits", "start_logits", "last_hidden_state") if hasattr(out, name))


HEADS = [(family, name) for family in FAMILY_NAMES for name in FAMILIES[family].model_classes()]


@pytest.mark.parametrize("family, class_name", HEADS, ids=[name for _, name in HEADS])
def test_every_model_class_builds_runs_saves_and_loads_under_the_swap(tmp_path, family, class_name):
    """The class is looked up before the swap (as user code imports it); QA heads call their base
    model `transformer`. Loaded under the swap: stock's outputs and every layer's hidden states; saved
    under the swap: a stock checkpoint stock loads as is."""
    cls = getattr(transformers, class_name)
    config = family_config(family, pad_token_id=0)
    torch.manual_seed(0)
    stock = cls(config).eval()
    stock.save_pretrained(tmp_path / "stock")
    ids = random_ids(config.vocab_size, batch=1, seq=24)
    swapped_cls = decoder_class(family)
    with replace_decoder(swapped_cls, family=family):
        built = cls(config)
        loaded = cls.from_pretrained(tmp_path / "stock").eval()
        loaded.save_pretrained(tmp_path / "saved")
    layers = loaded.base_model.layers
    assert {type(layer) for layer in layers} == {swapped_cls} and {type(la) for la in built.base_model.layers} == {
        swapped_cls}
    assert rel_max_err(_outputs(loaded, ids), _outputs(stock, ids)) <= 1e-5
    with torch.no_grad():
        hidden = loaded.base_model(ids, output_hidden_states=True).hidden_states
    assert len(hidden) == config.num_hidden_layers + 1
    assert type(loaded.base_model).__name__ == FAMILIES[family].hf.base_model  # what a saved config names
    again = cls.from_pretrained(tmp_path / "saved").eval()
    assert type(again.base_model.layers[0]).__name__ == FAMILIES[family].hf.decoder
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), stock.state_dict().values(), strict=True))


def test_a_base_model_class_imported_before_the_swap_records_every_layer():
    """The families issue's repro: LlamaModel held from before the swap returned an empty hidden_states."""
    from transformers import LlamaModel

    config = family_config("llama")
    with replace_decoder(te_decoder_cls=decoder_class("llama")):
        model = LlamaModel(config)
    out = model(random_ids(config.vocab_size, batch=1, seq=8), output_hidden_states=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert type(LlamaModel(config)) is LlamaModel  # built after the swap: stock again


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_class_is_named_for_its_family_and_refuses_another(family):
    cls = decoder_class(family)
    assert cls.__name__.startswith("Torch") and cls.family == family
    other = next(name for name in FAMILY_NAMES if name != family)
    with pytest.raises(Exception, match=f"is a {family} decoder layer, not a {other} one"), \
            replace_decoder(cls, family=other):
        pass
    assert ("Composite" in cls.__name__) == (FAMILIES[family].layout != "TransformerLayer")


@pytest.mark.parametrize("make, reason", [
    (lambda: transformers.Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=16),
     "attn_logit_softcapping=50.0.*no TransformerEngine release"),
    (lambda: family_config("gemma3_text", attn_logit_softcapping=30.0), "attn_logit_softcapping=30.0"),
    (lambda: family_config("gemma3_text", hidden_activation="gelu"), "hidden_activation='gelu'"),
    (lambda: family_config("gemma", hidden_act="relu"), "hidden_act='relu'"),
    (lambda: family_config("llama", attention_bias=True), "attention_bias=True"),
    (lambda: family_config("phi3", rope_parameters={**family_config("phi3").rope_parameters, "attention_factor": 1.2}),
     "partial_rotary_factor=0.5 with a rope attention factor of 1.2"),
    (lambda: family_config("mistral", use_bidirectional_attention=True), "use_bidirectional_attention"),
], ids=["gemma2", "gemma3-softcapping", "gemma3-erf-gelu", "gemma-relu", "llama-bias", "phi3-partial-scaled",
        "bidirectional"])
def test_what_no_backend_can_express_is_refused_by_name(make, reason):
    with pytest.raises(UnsupportedConfigError, match=reason):
        build_pair(make())


def test_multimodal_gemma3_and_unknown_families_are_refused_with_what_to_do():
    with pytest.raises(UnsupportedConfigError, match="swap its text model: gemma3_text"):
        family_for_config(transformers.Gemma3Config())
    with pytest.raises(SourceError, match="model_type 'bert' is not supported"):
        family_for_config(transformers.BertConfig())


def test_qwen2_te_only_biases_are_zero_frozen_and_never_trained():
    pair = build_pair("tiny-qwen2")
    layer = pair.swapped.model.layers[0]
    for name in ("self_attention.proj.bias", "layernorm_mlp.fc1_bias", "layernorm_mlp.fc2_bias"):
        param = layer.get_parameter(name)
        assert not param.requires_grad and not param.any()
    assert layer.self_attention.layernorm_qkv.query_bias.requires_grad
    assert layer.self_attention.layernorm_qkv.query_bias.any()  # the stock model's, drawn (not HF's zeros)


FAULTS = [(family, name) for family in FAMILY_NAMES for name in MUTATIONS
          if name != "fp8-skipped" and applies_to(name, family_config(family))
          and not (name == "rope-base-10000" and family in ("llama", "mistral", "gemma"))  # their theta is 1e4
          and name != "router-bf16"]  # moves fp32 logits by ~1e-4, not 1e-3: tests/test_moe.py checks it


@pytest.mark.parametrize("family, fault", FAULTS, ids=[f"{f}-{m}" for f, m in FAULTS])
def test_each_family_fault_moves_the_logits(family, fault):
    """Cheap logit-level check of every planted fault; test_family_parity.py runs the verdicts."""
    config = family_config(family)
    ids = random_ids(config.vocab_size, seq=SEQ)
    with mutation(fault, config), torch.no_grad():  # built and run under the fault (some act at run time)
        pair = build_pair(config)
        assert rel_max_err(pair.swapped(ids).logits, pair.stock(ids).logits) > 1e-3


def test_a_fault_with_nothing_to_break_is_refused_for_the_config():
    with pytest.raises(Exception, match="has nothing to break in this llama config: it needs a sliding window"):
        mutation("window-off-by-one", family_config("llama"))

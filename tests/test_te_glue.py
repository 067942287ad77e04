"""Our TE glue (arguments, RoPE tensor, softmax scale, state-dict names, recipes, autocast, availability)
against a stand-in TE on CPU, for every TE API generation the stand-in records.

These test teswap's code, not TransformerEngine: see te_standin.py. Real-TE tests are in test_te_gpu.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import te_standin
from support import CONFIGS, FAMILY_NAMES, FAMILY_PRESETS, llama, logits_of, random_ids, rel_max_err
from teswap import build_pair
from teswap.errors import BackendUnavailableError, UnsupportedConfigError
from teswap.hardware.probe import Availability
from teswap.layers.backends import BACKENDS
from teswap.swap.mapping import te_layer_keys

GENERATIONS = list(te_standin.GENERATIONS)
OLDEST_AND_LATEST = ["2.1", te_standin.LATEST]
CONFIG_NAMES = ["gqa", "explicit-head-dim", "llama3-rope-scaling", "yarn-attention-scaling"]


@pytest.fixture(params=GENERATIONS, ids=[f"te{v}" for v in GENERATIONS])
def version(request) -> str:
    return request.param


@pytest.fixture
def standin(monkeypatch, version):
    """Generation `version` of the stand-in, with the te backend's probe forced to yes (a CPU machine)."""
    module = te_standin.install(monkeypatch, version)
    forced = dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True))
    monkeypatch.setitem(BACKENDS, "te", forced)
    return module


# --- layer build -----------------------------------------------------------------------------------


# Every config on the latest generation; on the older ones the config that overrides the softmax scale.
BUILDS = [(te_standin.LATEST, name) for name in CONFIG_NAMES] + [
    (v, "yarn-attention-scaling") for v in GENERATIONS if v != te_standin.LATEST]


@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
@pytest.mark.parametrize("version, name", BUILDS, ids=[f"te{v}-{name}" for v, name in BUILDS])
def test_te_glue_matches_stock_through_the_standin(standin, name, fused):
    pair = build_pair(CONFIGS[name](), backend="te", fuse_qkv=fused)
    assert pair.weights_equal
    ids = random_ids(pair.config.vocab_size, seq=48)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= 1e-5


def test_layer_arguments_are_what_a_llama_layer_needs(standin):
    config = CONFIGS["explicit-head-dim"]()
    pair = build_pair(config, backend="te", dtype=torch.float64)
    layers = pair.swapped.model.layers
    assert type(layers[0]).__name__ == "TELlamaDecoderLayer"
    assert [layer.init_kwargs["layer_number"] for layer in layers] == [1, 2]  # TE keys its KV cache by it
    first = layers[0].init_kwargs
    assert first["kv_channels"] == 24 != config.hidden_size // config.num_attention_heads
    assert first["num_gqa_groups"] == config.num_key_value_heads
    assert first["ffn_hidden_size"] == config.intermediate_size
    assert first["layernorm_epsilon"] == config.rms_norm_eps
    assert first["params_dtype"] == torch.float64
    assert first["hidden_dropout"] == 0.0 and first["attention_dropout"] == 0.0
    assert first["bias"] is False and first["fuse_qkv_params"] is False
    assert set(first) <= set(te_standin.GENERATIONS["2.1"].layer_init)  # nothing newer than TE 2.0/2.1


@pytest.mark.parametrize("version", OLDEST_AND_LATEST, ids=[f"te{v}" for v in OLDEST_AND_LATEST])
def test_rotary_tensor_is_te_shaped_fp32_and_shared_by_all_layers(standin):
    pair = build_pair("tiny-llama3", backend="te", dtype=torch.bfloat16)
    ids = random_ids(pair.config.vocab_size, seq=40)
    with torch.no_grad():
        pair.swapped(ids, use_cache=False)
    calls = [layer.forward_calls[-1] for layer in pair.swapped.model.layers]
    freqs = calls[0]["rotary_pos_emb"]
    assert freqs.shape == (40, 1, 1, pair.config.head_dim) and freqs.dtype == torch.float32
    assert all(call["rotary_pos_emb"] is freqs for call in calls)  # one table per forward, not per layer
    assert all(call["attention_mask"] is None for call in calls)  # mask type "causal"
    expected = torch.outer(torch.arange(40.0), pair.stock.model.rotary_emb.inv_freq)
    assert torch.equal(freqs[:, 0, 0, : expected.shape[1]], expected)


def test_attention_scaling_sets_every_te_attention_backend(standin):
    pair = build_pair(CONFIGS["yarn-attention-scaling"](), backend="te")
    core = pair.swapped.model.layers[0].self_attention.core_attention
    scaling = pair.stock.model.rotary_emb.attention_scaling
    expected = scaling**2 / pair.config.head_dim**0.5
    assert scaling != 1.0
    assert not hasattr(core, "softmax_scale")  # TE keeps it on the backends only
    for holder in te_standin.SOFTMAX_SCALE_HOLDERS:
        assert getattr(core, holder).softmax_scale == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("holders, missing", [((), "flash_attention, core_attention.fused_attention"),
                                              (("flash_attention",), "core_attention.fused_attention")],
                         ids=["none", "flash-only"])
def test_moved_softmax_scale_layout_is_refused(monkeypatch, holders, missing):
    te_standin.install(monkeypatch, softmax_scale_holders=holders)
    monkeypatch.setitem(BACKENDS, "te", dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True)))
    with pytest.raises(UnsupportedConfigError, match="TE's layout moved") as info:
        build_pair(CONFIGS["yarn-attention-scaling"](), backend="te")
    assert missing in str(info.value) and "TransformerEngine 2.20" in str(info.value)
    build_pair(CONFIGS["gqa"](), backend="te")  # attention_scaling == 1: nothing to override, still builds


@pytest.mark.parametrize("version", OLDEST_AND_LATEST, ids=[f"te{v}" for v in OLDEST_AND_LATEST])
@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
def test_state_dict_names_are_te_names_plus_extra_state(standin, fused):
    pair = build_pair(llama(), backend="te", fuse_qkv=fused)
    keys = {k.split(".", 3)[3] for k in pair.swapped.state_dict() if ".layers.0." in k}
    extra = {f"{m}._extra_state" for m in ("self_attention.layernorm_qkv", "self_attention.core_attention",
                                           "self_attention.proj", "layernorm_mlp")}
    assert keys == set(te_layer_keys(pair.config, fuse_qkv=fused)) | extra


def test_te_backend_is_refused_where_te_cannot_run():
    """Without the stand-in, on this machine: one clear reason, from the probe."""
    from teswap.hardware.probe import probe_te

    if probe_te():
        pytest.skip("TE can run on this machine")
    with pytest.raises(BackendUnavailableError, match="backend 'te' is unavailable: "):
        build_pair("tiny", backend="te")


# --- every family through the stand-in ---------------------------------------------------------------

FAMILY_BUILDS = [(te_standin.LATEST, family) for family in FAMILY_NAMES] + [
    ("2.1", "mixtral"), ("2.5", "mixtral"), ("2.9", "qwen3_moe"), ("2.9", "qwen3"), ("2.9", "gemma3_text"),
    ("2.1", "mistral"), ("2.1", "phi3"), ("2.1", "gemma"), ("2.5", "qwen2")]


@pytest.mark.parametrize("version, family", FAMILY_BUILDS, ids=[f"te{v}-{f}" for v, f in FAMILY_BUILDS])
def test_every_family_matches_stock_through_the_standin(standin, family):
    pair = build_pair(FAMILY_PRESETS[family], backend="te")
    assert pair.weights_equal
    ids = random_ids(pair.config.vocab_size, seq=48)  # past every tiny preset's 16-token window
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= 1e-5
    prompt = random_ids(pair.config.vocab_size, batch=2, seq=10, seed=2)  # TE's KV cache, past the window
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(pair.swapped.generate(prompt, **kwargs), pair.stock.generate(prompt, **kwargs))


FUSED = [(te_standin.LATEST, family) for family in ("qwen2", "phi3", "gemma3_text")]  # fused biases, rows, MHA


@pytest.mark.parametrize("version, family", FUSED, ids=[f"te{v}-{f}" for v, f in FUSED])
def test_fused_qkv_families_match_stock_through_the_standin(standin, family):
    pair = build_pair(FAMILY_PRESETS[family], backend="te", fuse_qkv=True)
    assert pair.weights_equal
    ids = random_ids(pair.config.vocab_size, seq=48)
    assert rel_max_err(logits_of(pair.swapped, ids), logits_of(pair.stock, ids)) <= 1e-5


EXPECTED_ARGUMENTS = {
    "mistral": {"window_size": (15, 0), "bias": False},
    "qwen2": {"bias": True},  # layer 0 full; the sliding layer is checked below
    "qwen3": {"qk_norm_type": "RMSNorm", "qk_norm_before_rope": True, "qk_norm_eps": 1e-6, "kv_channels": 48},
    "phi3": {"window_size": (15, 0), "qkv_weight_interleaved": False},
    "gemma": {"zero_centered_gamma": True, "activation": "geglu", "kv_channels": 64},
}


@pytest.mark.parametrize("version", [te_standin.LATEST], ids=[f"te{te_standin.LATEST}"])
@pytest.mark.parametrize("family", list(EXPECTED_ARGUMENTS))
def test_each_family_passes_te_its_own_arguments(standin, family):
    pair = build_pair(FAMILY_PRESETS[family], backend="te")
    first = pair.swapped.model.layers[0].init_kwargs
    assert {name: first.get(name) for name in EXPECTED_ARGUMENTS[family]} == EXPECTED_ARGUMENTS[family]
    assert first["normalization"] == "RMSNorm" and first["attn_input_format"] == "bshd"
    if family == "qwen2":
        assert "window_size" not in first and pair.swapped.model.layers[1].init_kwargs["window_size"] == (15, 0)


@pytest.mark.parametrize("version", [te_standin.LATEST], ids=[f"te{te_standin.LATEST}"])
def test_gemma3_is_a_composite_of_te_modules_with_its_own_arguments(standin):
    pair = build_pair("tiny-gemma3", backend="te")
    sliding, full = pair.swapped.model.layers
    assert type(sliding).__name__ == "TEGemma3TextDecoderComposite"
    assert not isinstance(sliding, te_standin.TransformerLayer)
    attention = sliding.self_attention.init_kwargs
    assert attention["window_size"] == (15, 0) and "window_size" not in full.self_attention.init_kwargs
    assert attention["qk_norm_type"] == "RMSNorm" and attention["qk_norm_before_rope"] is True
    assert attention["zero_centered_gamma"] is True and attention["input_layernorm"] is True
    assert sliding.layernorm_mlp.init_kwargs["activation"] == "geglu"
    assert sliding.post_attention_layernorm.init_kwargs["zero_centered_gamma"] is True
    core = sliding.self_attention.core_attention
    assert core.effective_scale() == pytest.approx(24 ** -0.5)  # query_pre_attn_scalar, not head_dim 32
    # TE's q/k RMSNorm holds 1 + w (it has no zero-centred gamma); HF holds w
    hf_w = pair.stock.model.layers[0].self_attn.q_norm.weight
    assert torch.equal(sliding.self_attention.q_norm.weight, (hf_w.float() + 1).to(hf_w.dtype))


MOE_BUILDS = [(version, experts) for version in ("2.9", te_standin.LATEST)  # q/k norm: TE >= 2.7
              for experts in ("grouped", "hf")]


@pytest.mark.parametrize("version, experts", MOE_BUILDS, ids=[f"te{v}-{e}" for v, e in MOE_BUILDS])
def test_moe_composite_of_te_modules_routes_as_stock(standin, experts):
    """te_mixtral's layer: MultiheadAttention + RMSNorm + router te.Linear, GroupedLinear, moe_permute/unpermute
    (each call checked against that TE release's signature), or HF's own block; router logits and aux loss."""
    pair = build_pair("tiny-qwen3-moe", backend="te", experts=experts)
    assert pair.weights_equal
    dense, moe = pair.swapped.model.layers[0], pair.swapped.model.layers[1]
    assert type(moe).__name__ == f"TEQwen3MoeDecoderMoEComposite{'HFExperts' if experts == 'hf' else ''}"
    assert isinstance(dense.mlp.fc1, te_standin.Linear)  # a dense layer among MoE ones
    ids = random_ids(pair.config.vocab_size, seq=24)
    te_standin.MOE_CALLS.clear()
    with torch.no_grad():
        ours, theirs = (model(ids, output_router_logits=True) for model in (pair.swapped, pair.stock))
    assert rel_max_err(ours.logits, theirs.logits) <= 1e-5
    assert len(ours.router_logits) == 2 and abs(float(ours.aux_loss) - float(theirs.aux_loss)) <= 1e-6
    if experts == "grouped":
        assert isinstance(moe.mlp.experts_fc1, te_standin.GroupedLinear)
        assert moe.mlp.experts_fc1.init_kwargs["num_gemms"] == 8 and moe.mlp.experts_fc1.init_kwargs["bias"] is False
        assert sum(moe.mlp.experts_fc1.forward_calls[-1]) == ids.numel() * 2  # tokens x top-k rows, by expert
        assert [name for name, _ in te_standin.MOE_CALLS[:2]] == ["moe_permute", "moe_unpermute"]
        assert te_standin.MOE_CALLS[0][1]["map_type"] == "index"
    else:
        assert type(moe.mlp).__name__ == "Qwen3MoeSparseMoeBlock" and not te_standin.MOE_CALLS


@pytest.mark.parametrize("version", ["2.1", "2.5"], ids=["te2.1", "te2.5"])
@pytest.mark.parametrize("family", ["qwen3", "gemma3_text"])
def test_q_k_norm_before_rope_is_refused_before_te_2_7(standin, family):
    with pytest.raises(UnsupportedConfigError, match="needs TransformerEngine >= 2.7"):
        build_pair(FAMILY_PRESETS[family], backend="te")

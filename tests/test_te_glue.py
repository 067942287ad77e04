"""Our TE glue (arguments, RoPE tensor, softmax scale, state-dict names) against a stand-in TE on CPU.

These test teswap's code, not TransformerEngine: see te_standin.py. Real-TE tests are in test_te_gpu.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import te_standin
from support import CONFIGS, llama, logits_of, random_ids, rel_max_err
from teswap import build_pair
from teswap.hardware.probe import Availability
from teswap.layers.backends import BACKENDS
from teswap.swap.mapping import te_layer_keys


@pytest.fixture
def standin(monkeypatch):
    module = te_standin.install(monkeypatch)
    forced = dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True))
    monkeypatch.setitem(BACKENDS, "te", forced)
    return module


@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
@pytest.mark.parametrize("name", ["gqa", "explicit-head-dim", "llama3-rope-scaling", "yarn-attention-scaling"])
def test_te_glue_matches_stock_through_the_standin(standin, name, fused):
    pair = build_pair(CONFIGS[name](), backend="te", fuse_qkv=fused)
    assert pair.weights_equal
    ids = random_ids(pair.config.vocab_size, seq=96)
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
    assert core.effective_scale() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("fused", [False, True], ids=["split-qkv", "fused-qkv"])
def test_state_dict_names_are_te_names_plus_extra_state(standin, fused):
    pair = build_pair(llama(), backend="te", fuse_qkv=fused)
    keys = {k.split(".", 3)[3] for k in pair.swapped.state_dict() if ".layers.0." in k}
    extra = {f"{m}._extra_state" for m in ("self_attention.layernorm_qkv", "self_attention.core_attention",
                                           "self_attention.proj", "layernorm_mlp")}
    assert keys == set(te_layer_keys(fuse_qkv=fused)) | extra


def test_te_backend_is_refused_where_te_cannot_run():
    """Without the stand-in, on this machine: one clear reason, from the probe."""
    from teswap.errors import BackendUnavailableError
    from teswap.hardware.probe import probe_te

    if probe_te():
        pytest.skip("TE can run on this machine")
    with pytest.raises(BackendUnavailableError, match="backend 'te' is unavailable: "):
        build_pair("tiny", backend="te")


@pytest.mark.parametrize("precision, recipe",
                         [("fp8-delayed", "DelayedScaling"), ("fp8-current", "Float8CurrentScaling")])
def test_fp8_precisions_reach_te_autocast_with_a_te_recipe(standin, monkeypatch, precision, recipe):
    """Our wiring builds TE's recipe object and enters te.pytorch.autocast(recipe=...) around the swapped model."""
    import torch

    from teswap.parity.case import ParityCase, run_parity_case

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the probe's CUDA check; math stays on CPU
    report = run_parity_case(ParityCase(source="tiny", backend="te", precision=precision, gen_tokens=0))
    calls = te_standin.AUTOCAST_CALLS
    assert calls and {type(call["recipe"]).__name__ for call in calls} == {recipe}
    assert all(call["enabled"] is True for call in calls)
    assert calls[0]["recipe"].kwargs["fp8_format"] is te_standin.Format.HYBRID
    assert report.passed, report.failure_summary()
    bf16 = run_parity_case(ParityCase(source="tiny", backend="te", precision="bf16", gen_tokens=0, grads=False))
    assert report.swapped["robust_rel"] > 3 * bf16.swapped["robust_rel"]  # the recipe really quantized


def test_unavailable_te_recipe_is_refused_with_tes_reason(standin, monkeypatch):
    import torch

    from teswap.errors import BackendUnavailableError
    from teswap.precision.runtime import require_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    standin.is_mxfp8_available = lambda return_reason=False: (False, "MXFP8 needs SM 10.x")
    with pytest.raises(BackendUnavailableError, match="TransformerEngine: MXFP8 needs SM 10.x"):
        require_precision("mxfp8", "te", "cuda")

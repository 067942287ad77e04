"""Our glue for the decode speed options on te, through TE stand-ins (te_standin.py, te_speed_standin.py).

The stand-ins check our calls against TE's recorded signatures (make_graphed_callables at TE 2.20 and
2.8, quantized_model_init / fp8_model_init) and compute with the twin; a pass says the glue drives TE's
API as TE's source declares it (KV cache reused across generations, the graphed decode step fed from a
static buffer, FP8 weights built fused and loaded), nothing about TE's kernels or speed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import te_speed_standin
import te_standin
from support import llama
from teswap import build_pair
from teswap.benchmark.decode.setup import prepare_decode
from teswap.benchmark.decode.steps import DecodeStep, HFCacheDecoder
from teswap.benchmark.te_speed import TEGraphDecoder, fp8_weight_model
from teswap.benchmark.workloads import autocast_for
from teswap.hardware.probe import Availability
from teswap.layers.backends import BACKENDS

NEW_TOKENS = 5


def te_pair(monkeypatch, version: str = "2.20"):
    te_speed_standin.install(monkeypatch, version)
    monkeypatch.setitem(BACKENDS, "te", dataclasses.replace(BACKENDS["te"], probe=lambda: Availability(True)))
    return build_pair(llama(vocab_size=64), backend="te", seed=6)


def prompt(batch: int = 2) -> torch.Tensor:
    return torch.randint(1, 64, (batch, 6), generator=torch.Generator().manual_seed(3))


def tokens_of(model, decoder, ids) -> torch.Tensor:
    return DecodeStep(model=model, input_ids=ids, new_tokens=NEW_TOKENS, autocast=torch.no_grad, decoder=decoder)()


def stock_tokens(pair, ids):
    return tokens_of(pair.stock, HFCacheDecoder(pair.stock, cache_kind="dynamic", capacity=11), ids)


def test_te_decodes_stocks_tokens_through_one_reused_te_cache(monkeypatch):
    pair, ids = te_pair(monkeypatch), prompt()
    decoder = HFCacheDecoder(pair.swapped, cache_kind="te", capacity=ids.shape[1] + NEW_TOKENS)
    first = tokens_of(pair.swapped, decoder, ids)
    second = tokens_of(pair.swapped, decoder, ids)  # the same InferenceParams, reset: a new prompt
    assert torch.equal(first, stock_tokens(pair, ids)) and torch.equal(second, first)
    assert len(te_standin.INFERENCE_PARAMS_MADE) == 1
    params = te_standin.INFERENCE_PARAMS_MADE[0]
    assert params.init_kwargs["max_sequence_length"] == 11 and params.steps.count({0: 6, 1: 6}) == 2


@pytest.mark.parametrize("version", ["2.20", "2.8"])
def test_the_graphed_te_decode_step_replays_to_stocks_tokens(monkeypatch, version):
    pair, ids = te_pair(monkeypatch, version), prompt()
    decoder = TEGraphDecoder(pair.swapped, capacity=ids.shape[1] + NEW_TOKENS, precision="fp32", prompt=ids)
    assert torch.equal(tokens_of(pair.swapped, decoder, ids), stock_tokens(pair, ids))
    assert torch.equal(tokens_of(pair.swapped, decoder, ids), stock_tokens(pair, ids))  # the graph reused
    (call,) = te_speed_standin.GRAPH_CALLS  # recorded once
    assert call["sample_args"] == (decoder._buffer,) and call["allow_unused_input"] is True
    names = {"2.20": ("enabled", "recipe"), "2.8": ("fp8_enabled", "fp8_recipe")}[version]
    assert call[names[0]] is False and names[1] not in call  # bf16/fp32: no FP8 inside the graph
    layer = pair.swapped.model.layers[0]
    decode_calls = [c for c in layer.forward_calls if c.get("self_attn_mask_type") == "padding"]
    assert decode_calls and all(c["inference_params"] is te_standin.INFERENCE_PARAMS_MADE[0] for c in decode_calls)


def test_an_fp8_graph_gets_the_cells_recipe(monkeypatch):
    pair, ids = te_pair(monkeypatch), prompt()
    pair.swapped.to(torch.bfloat16)
    with autocast_for("te", "fp8-current")():
        TEGraphDecoder(pair.swapped, capacity=11, precision="fp8-current", prompt=ids)
    (call,) = te_speed_standin.GRAPH_CALLS
    assert call["enabled"] is True and type(call["recipe"]).__name__ == "Float8CurrentScaling"


@pytest.mark.parametrize(("version", "init"), [("2.20", "quantized_model_init"), ("2.8", "fp8_model_init")])
def test_fp8_weights_are_built_fused_under_tes_model_init_with_the_weights_loaded(monkeypatch, version, init):
    pair, ids = te_pair(monkeypatch, version), prompt()
    fp8 = fp8_weight_model(pair.swapped, "fp8-delayed")
    ((name, kwargs),) = te_speed_standin.INIT_CALLS
    assert name == init and set(kwargs) == {"enabled", "recipe"} and kwargs["enabled"] is True
    assert type(kwargs["recipe"]).__name__ == "DelayedScaling"
    layer = fp8.model.layers[0]
    assert layer.init_kwargs["fuse_qkv_params"] is True  # FP8-only weights need fused QKV
    with torch.no_grad():  # the stand-in keeps weights high precision: the copy computes what the source does
        assert torch.equal(fp8(ids).logits, pair.swapped(ids).logits)


def test_a_decode_cell_with_fp8_weights_runs_the_copy_and_gives_the_source_back(monkeypatch):
    pair, ids = te_pair(monkeypatch), prompt(batch=8)  # TE's FP8 rows rule: a decode step has batch rows
    source = pair.swapped.to(torch.bfloat16)
    step = prepare_decode(source, ids, backend="te", precision="fp8-delayed", new_tokens=NEW_TOKENS,
                          options="cuda-graphs+fp8-weights", autocast=autocast_for("te", "fp8-delayed"))
    assert step.model is not source and isinstance(step.decoder, TEGraphDecoder)
    assert step().shape == (8, NEW_TOKENS)
    step.close()
    assert step.on_close is None

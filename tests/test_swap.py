"""replace_decoder: patches only inside the block, restores on every exit, serialises threads."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama

from support import TorchLlamaDecoderLayer, TorchLlamaDecoderLayerFusedQKV, logits_of, random_ids, rel_max_err
from teswap import replace_decoder
from teswap.errors import SourceError
from teswap.layers.rope import RopeTable
from teswap.swap.mapping import hf_to_te_state_dict
from teswap.swap.presets import tiny

ORIGINAL = modeling_llama.LlamaDecoderLayer
ORIGINAL_MODEL = modeling_llama.LlamaModel


class Marker(TorchLlamaDecoderLayer):
    pass


def test_patch_active_inside_and_restored_after():
    with replace_decoder(Marker):
        assert modeling_llama.LlamaDecoderLayer is Marker
        base = ORIGINAL_MODEL(tiny())  # the class as imported before the swap
        assert isinstance(base, ORIGINAL_MODEL) and type(base).__name__ == "LlamaModel"
        assert type(base)._can_record_outputs == {"hidden_states": Marker}  # its HF metadata names Marker
    assert modeling_llama.LlamaDecoderLayer is ORIGINAL
    assert modeling_llama.LlamaModel is ORIGINAL_MODEL
    assert "post_init" not in modeling_llama.LlamaPreTrainedModel.__dict__
    assert type(ORIGINAL_MODEL(tiny())) is ORIGINAL_MODEL


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_restored_when_the_block_raises(exc):
    with pytest.raises(exc), replace_decoder(Marker):
        raise exc()
    assert modeling_llama.LlamaDecoderLayer is ORIGINAL


def test_nested_swaps_restore_level_by_level():
    with replace_decoder(Marker):
        with replace_decoder(TorchLlamaDecoderLayerFusedQKV):
            assert modeling_llama.LlamaDecoderLayer is TorchLlamaDecoderLayerFusedQKV
            inner = LlamaForCausalLM(tiny())
            assert type(inner.model).__bases__ == (ORIGINAL_MODEL,)  # not a subclass of a subclass
            assert type(inner.model)._can_record_outputs == {"hidden_states": TorchLlamaDecoderLayerFusedQKV}
        assert modeling_llama.LlamaDecoderLayer is Marker
        assert type(LlamaForCausalLM(tiny()).model)._can_record_outputs == {"hidden_states": Marker}
    assert modeling_llama.LlamaDecoderLayer is ORIGINAL and modeling_llama.LlamaModel is ORIGINAL_MODEL
    assert "post_init" not in modeling_llama.LlamaPreTrainedModel.__dict__


def test_unknown_family_is_a_clear_error():
    with pytest.raises(SourceError, match="unknown model family 'gpt9'"), replace_decoder(Marker, family="gpt9"):
        pass


def test_models_built_outside_the_block_keep_stock_layers():
    before = LlamaForCausalLM(tiny())
    with replace_decoder(te_decoder_cls=TorchLlamaDecoderLayer):  # TE's example, verbatim
        inside = LlamaForCausalLM(tiny())
    after = LlamaForCausalLM(tiny())
    assert {type(m) for m in before.model.layers} == {ORIGINAL}
    assert {type(m) for m in after.model.layers} == {ORIGINAL}
    assert {type(m) for m in inside.model.layers} == {TorchLlamaDecoderLayer}


def test_te_example_pattern_gives_a_working_model_with_one_shared_rope_table():
    """Built as TE's example builds it (no build_pair, no bind_rope), then weights copied by hand."""
    stock = LlamaForCausalLM(tiny()).eval()
    with replace_decoder(te_decoder_cls=TorchLlamaDecoderLayer):
        swapped = LlamaForCausalLM(tiny()).eval()
    swapped.config.use_cache = False
    swapped.load_state_dict(hf_to_te_state_dict(stock.state_dict(), stock.config))
    tables = {id(layer.rope) for layer in swapped.model.layers}
    assert len(tables) == 1 and isinstance(swapped.model.layers[0].rope, RopeTable)
    ids = random_ids(stock.config.vocab_size)
    assert rel_max_err(logits_of(swapped, ids), logits_of(stock, ids)) <= 1e-5


def test_two_threads_cannot_interleave_patches():
    """Thread B's swap waits until thread A's block has ended; each sees only its own class."""
    class A(TorchLlamaDecoderLayer):
        pass

    class B(TorchLlamaDecoderLayer):
        pass

    a_inside, release_a = threading.Event(), threading.Event()
    seen: dict[str, list] = {"a": [], "b": []}

    def thread_a():
        with replace_decoder(A):
            a_inside.set()
            release_a.wait(5)
            seen["a"].append(modeling_llama.LlamaDecoderLayer)
            seen["a"].append(type(LlamaForCausalLM(tiny()).model.layers[0]))

    def thread_b():
        a_inside.wait(5)
        with replace_decoder(B):
            seen["b"].append(modeling_llama.LlamaDecoderLayer)
            seen["b"].append(type(LlamaForCausalLM(tiny()).model.layers[0]))

    ta, tb = threading.Thread(target=thread_a), threading.Thread(target=thread_b)
    ta.start()
    tb.start()
    a_inside.wait(5)
    tb.join(0.3)
    assert tb.is_alive(), "thread B entered its swap while thread A's was active"
    release_a.set()
    ta.join(10)
    tb.join(10)
    assert seen == {"a": [A, A], "b": [B, B]}
    assert modeling_llama.LlamaDecoderLayer is ORIGINAL


def test_stock_build_waits_for_another_threads_swap():
    """build_pair's stock model is built under the swap lock, so it never gets another thread's class."""
    from teswap import build_pair

    inside, release = threading.Event(), threading.Event()
    result = {}

    def swapper():
        with replace_decoder(Marker):
            inside.set()
            release.wait(5)

    def builder():
        inside.wait(5)
        result["pair"] = build_pair("tiny")

    ts, tb = threading.Thread(target=swapper), threading.Thread(target=builder)
    ts.start()
    tb.start()
    inside.wait(5)
    tb.join(0.3)
    assert tb.is_alive(), "build_pair built while another thread's swap was active"
    release.set()
    ts.join(10)
    tb.join(30)
    assert type(result["pair"].stock.model.layers[0]) is ORIGINAL
    assert type(result["pair"].swapped.model.layers[0]) is TorchLlamaDecoderLayer
    assert torch.equal(result["pair"].stock.lm_head.weight, result["pair"].swapped.lm_head.weight)

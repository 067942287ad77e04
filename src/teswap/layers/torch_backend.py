"""The torch backend: the pure-PyTorch TE twin behind HF's decoder-layer signature, for any family.

A family's class (`torch_decoder_class(plan_source)`: TorchLlamaDecoderLayer, TorchQwen2DecoderLayer,
TorchGemma3TextDecoderComposite, ...) builds each layer from the family's LayerPlan: a TransformerLayer
or, where the family needs it, the composite of TE modules. It honours an HF decoder call the way
HF's own attention does: the 4D mask (padding, packed sequences, eager's additive float), per-row
position_ids, and any HF `Cache` (dynamic, sliding, static) through `Cache.update(keys, values,
layer_idx)`; a window is the layer's own (TE's window_size), except over a static cache, whose key
slots HF's mask alone can place. Nothing it does reads tensor values on the host, so the model traces
under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import torch
from transformers import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from teswap.layers.hf_adapter import HFDecoderCall, keep_fresh_weights
from teswap.layers.hf_inputs import DecoderInputs, packed_causal_mask
from teswap.layers.plan import COMPOSITE, MOE_COMPOSITE, TRANSFORMER_LAYER, LayerPlan
from teswap.layers.rope import RopeTable, attention_softmax_scale, shared_table_for
from teswap.layers.torch_attention import KVUpdate
from teswap.layers.torch_layer import DecoderComposite, TransformerLayer
from teswap.layers.torch_moe import MoEComposite

# A layout's layer body in the twin.
BODIES: dict[str, Any] = {TRANSFORMER_LAYER: TransformerLayer, COMPOSITE: DecoderComposite,
                           MOE_COMPOSITE: MoEComposite}


class PlanSource(Protocol):
    """What a backend needs of a family (teswap.families.base.Family is one)."""

    name: str
    layout: str

    def layer_plan(self, config: PretrainedConfig, layer_idx: int) -> LayerPlan: ...


def swapped_class_name(backend: str, family: str, layout: str, fuse_qkv: bool, suffix: str = "") -> str:
    """TorchLlamaDecoderLayer, TEQwen2DecoderLayerFusedQKV, TorchGemma3TextDecoderComposite,
    TorchMixtralDecoderMoEComposite, ..."""
    word = "".join(part.capitalize() for part in family.split("_"))
    kind = {COMPOSITE: "DecoderComposite", MOE_COMPOSITE: "DecoderMoEComposite"}.get(layout, "DecoderLayer")
    return f"{backend}{word}{kind}{'FusedQKV' if fuse_qkv else ''}{suffix}"


class TorchDecoder(HFDecoderCall):
    """The twin's HF-facing layer; a family's class adds the layer body (TransformerLayer or composite)."""

    backend = "torch"
    fuse_qkv_params = False
    plan_source: PlanSource

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        plan = self.plan_source.layer_plan(config, layer_idx)
        rope = shared_table_for(config, plan)  # `bind_rope` re-points it at the model's own rotary module
        scale = attention_softmax_scale(rope, plan.te_kwargs["kv_channels"], plan.query_scale)
        moe = {"moe": plan.moe} if plan.layout == MOE_COMPOSITE else {}
        super().__init__(**plan.te_kwargs, **moe, fuse_qkv_params=self.fuse_qkv_params,  # type: ignore[call-arg]
                         softmax_scale=scale)  # the body's (TransformerLayer or composite) __init__, next in the MRO
        keep_fresh_weights(self, plan.frozen_zero)  # type: ignore[arg-type]
        self.layer_idx = layer_idx
        self.layer_plan_used = plan
        self.rope: RopeTable = rope
        self.hf_config = config

    def te_forward(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        seq_len = hidden_states.shape[1]
        freqs = self.rope.freqs(inputs.position_ids, seq_len, hidden_states.device)
        body = BODIES[self.layer_plan_used.layout]
        return body.forward(self, hidden_states, freqs, _twin_mask(inputs, seq_len),  # type: ignore[arg-type]
                            self._kv_update(inputs.cache), own_window=not _static_layer(inputs.cache, self.layer_idx))

    def _kv_update(self, cache: Any) -> KVUpdate | None:
        if cache is None:
            return None
        return lambda keys, values: cache.update(keys, values, self.layer_idx)


def _static_layer(cache: Any, layer_idx: int) -> bool:
    """Whether the cache keeps this layer's keys in fixed slots (HF's static caches), not ending at the query."""
    layers: Any = getattr(cache, "layers", None)
    return bool(layers) and bool(getattr(layers[layer_idx], "is_compileable", False))


def _twin_mask(inputs: DecoderInputs, seq_len: int) -> torch.Tensor | None:
    """HF's mask, narrowed to each packed sequence when flash-attention packing kwargs came along."""
    mask = inputs.attention_mask
    if inputs.packed_cu_seqlens is None:
        return mask
    packed = packed_causal_mask(inputs.packed_cu_seqlens, seq_len)
    if mask is None:
        return packed
    return packed & (mask if mask.dtype == torch.bool else mask == 0)


def class_suffix(plan_source: PlanSource) -> str:
    return str(getattr(plan_source, "class_suffix", ""))


def moe_class_attrs(plan_source: PlanSource) -> dict[str, Any]:
    """An MoE family's class says which experts it builds and which class returns the router's logits."""
    if plan_source.layout != MOE_COMPOSITE:
        return {}
    return {"experts": plan_source.experts, "router_class": plan_source.router_class()}  # type: ignore[attr-defined]


@functools.cache
def torch_decoder_class(plan_source: PlanSource, *, fuse_qkv: bool = False) -> type:
    """The twin's decoder class for a family (cached: one class per family and QKV layout)."""
    body = BODIES[plan_source.layout]
    name = swapped_class_name("Torch", plan_source.name, plan_source.layout, fuse_qkv, class_suffix(plan_source))
    what = "a TransformerLayer" if body is TransformerLayer else f"a {plan_source.layout} of TE modules"
    doc = (f"A drop-in for {plan_source.name}'s decoder layer with TE's parameter layout and math, in pure "
           f"PyTorch ({what}).")
    attrs = {"__doc__": doc, "__module__": __name__, "plan_source": plan_source, "fuse_qkv_params": fuse_qkv,
             "family": plan_source.name, **moe_class_attrs(plan_source)}
    cls = type(name, (TorchDecoder, body, GradientCheckpointingLayer), attrs)
    cls.__qualname__ = name
    return cls

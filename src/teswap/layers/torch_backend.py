"""`TorchLlamaDecoderLayer`: the pure-PyTorch TE twin behind HF's decoder-layer signature.

It honours an HF decoder call the way HF's own LlamaAttention does: the 4D mask as given (padding,
packed sequences, eager's additive float), per-row position_ids, and any HF `Cache` (dynamic,
static) through `Cache.update(keys, values, layer_idx)`. Nothing it does reads tensor values on the
host, so the model traces under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from teswap.layers.hf_adapter import HFDecoderCall, keep_fresh_weights, te_layer_kwargs
from teswap.layers.hf_inputs import DecoderInputs, packed_causal_mask
from teswap.layers.rope import RopeTable, attention_softmax_scale, shared_table_for
from teswap.layers.torch_layer import KVUpdate, TransformerLayer


class TorchLlamaDecoderLayer(HFDecoderCall, TransformerLayer, GradientCheckpointingLayer):  # type: ignore[misc]
    """A drop-in for LlamaDecoderLayer with TE's parameter layout and math, in pure PyTorch."""

    backend = "torch"
    fuse_qkv_params = False  # a subclass with True is made by `torch_decoder_class(fuse_qkv=True)`

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        rope = shared_table_for(config)  # `bind_rope` re-points it at the model's own rotary module
        kwargs = te_layer_kwargs(config, layer_idx)
        super().__init__(**kwargs, fuse_qkv_params=self.fuse_qkv_params,
                         softmax_scale=attention_softmax_scale(rope, kwargs["kv_channels"]))
        keep_fresh_weights(self)
        self.layer_idx = layer_idx
        self.rope: RopeTable = rope
        self.hf_config = config

    def te_forward(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        seq_len = hidden_states.shape[1]
        freqs = self.rope.freqs(inputs.position_ids, seq_len, hidden_states.device)
        return TransformerLayer.forward(self, hidden_states, freqs, _twin_mask(inputs, seq_len),
                                        self._kv_update(inputs.cache))

    def _kv_update(self, cache) -> KVUpdate | None:
        if cache is None:
            return None
        return lambda keys, values: cache.update(keys, values, self.layer_idx)


def _twin_mask(inputs: DecoderInputs, seq_len: int) -> torch.Tensor | None:
    """HF's mask, narrowed to each packed sequence when flash-attention packing kwargs came along."""
    mask = inputs.attention_mask
    if inputs.packed_cu_seqlens is None:
        return mask
    packed = packed_causal_mask(inputs.packed_cu_seqlens, seq_len)
    if mask is None:
        return packed
    return packed & (mask if mask.dtype == torch.bool else mask == 0)


class TorchLlamaDecoderLayerFusedQKV(TorchLlamaDecoderLayer):
    """The same layer with one fused `layernorm_qkv.weight` (TE's fuse_qkv_params=True layout)."""

    fuse_qkv_params = True


def torch_decoder_class(*, fuse_qkv: bool = False) -> type[TorchLlamaDecoderLayer]:
    return TorchLlamaDecoderLayerFusedQKV if fuse_qkv else TorchLlamaDecoderLayer

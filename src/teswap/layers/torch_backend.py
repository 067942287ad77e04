"""`TorchLlamaDecoderLayer`: the pure-PyTorch TE twin behind HF's decoder-layer signature."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from teswap.layers.hf_adapter import HFDecoderCall, te_layer_kwargs
from teswap.layers.rope import RopeTable, attention_softmax_scale, shared_table_for
from teswap.layers.torch_layer import TransformerLayer


class TorchLlamaDecoderLayer(HFDecoderCall, TransformerLayer, GradientCheckpointingLayer):  # type: ignore[misc]
    """A drop-in for LlamaDecoderLayer with TE's parameter layout and math, in pure PyTorch."""

    backend = "torch"
    fuse_qkv_params = False  # a subclass with True is made by `torch_decoder_class(fuse_qkv=True)`

    def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
        rope = shared_table_for(config)  # `bind_rope` re-points it at the model's own rotary module
        kwargs = te_layer_kwargs(config, layer_idx)
        super().__init__(**kwargs, fuse_qkv_params=self.fuse_qkv_params,
                         softmax_scale=attention_softmax_scale(rope, kwargs["kv_channels"]))
        self.layer_idx = layer_idx
        self.rope: RopeTable = rope

    def te_forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor) -> torch.Tensor:
        return TransformerLayer.forward(self, hidden_states, rotary_pos_emb)


class TorchLlamaDecoderLayerFusedQKV(TorchLlamaDecoderLayer):
    """The same layer with one fused `layernorm_qkv.weight` (TE's fuse_qkv_params=True layout)."""

    fuse_qkv_params = True


def torch_decoder_class(*, fuse_qkv: bool = False) -> type[TorchLlamaDecoderLayer]:
    return TorchLlamaDecoderLayerFusedQKV if fuse_qkv else TorchLlamaDecoderLayer

"""`TorchLlamaDecoderLayer`: the pure-PyTorch TE twin behind HF's decoder-layer signature."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from teswap.layers.hf_adapter import check_decoder_call, te_layer_kwargs
from teswap.layers.torch_layer import TransformerLayer
from teswap.layers.rope import RopeTable, attention_softmax_scale, shared_table_for


class TorchLlamaDecoderLayer(TransformerLayer, GradientCheckpointingLayer):
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

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        seq_len = hidden_states.shape[1]
        check_decoder_call(attention_mask=attention_mask, cache=cache, past_key_values=past_key_values,
                           use_cache=use_cache, seq_len=seq_len, kwargs=kwargs)
        return super().forward(hidden_states, self.rope.freqs(position_ids, seq_len, hidden_states.device))


class TorchLlamaDecoderLayerFusedQKV(TorchLlamaDecoderLayer):
    """The same layer with one fused `layernorm_qkv.weight` (TE's fuse_qkv_params=True layout)."""

    fuse_qkv_params = True


def torch_decoder_class(*, fuse_qkv: bool = False) -> type[TorchLlamaDecoderLayer]:
    return TorchLlamaDecoderLayerFusedQKV if fuse_qkv else TorchLlamaDecoderLayer

"""`TELlamaDecoderLayer` on `transformer_engine.pytorch.TransformerLayer` (TE 2.x, read from its source).

The class is made on demand because importing TE needs a CUDA build of its PyTorch extension; the
module itself imports nothing from TE. Differences from TE's te_llama example, on purpose:
RoPE from the HF model's own inv_freq (one shared table), attention_scaling honoured through the
softmax scale, kv_channels = config head_dim, layer_number = layer_idx + 1, a tensor returned,
fresh weights from config.initializer_range. HF's padding masks, per-row positions and KV cache go
through TE's own means: the padding_causal mask type on rows whose real tokens come first, and
InferenceParams behind HF's Cache interface (te_batch.py, te_cache.py); what TE cannot express is
refused, never ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig

from teswap.errors import UnsupportedConfigError
from teswap.hardware import te_api
from teswap.layers.hf_adapter import HFDecoderCall, keep_fresh_weights, te_layer_kwargs
from teswap.layers.hf_inputs import DecoderInputs
from teswap.layers.rope import attention_softmax_scale, shared_table_for
from teswap.layers.te_batch import TEBatch, te_batch

# TE's DotProductAttention (2.0 ... 2.20) computes softmax_scale once in __init__ (default
# 1/sqrt(kv_channels); TransformerLayer has no softmax_scale argument) and hands it to its three
# backends, which keep it as `self.softmax_scale` and read it at every forward; DotProductAttention
# itself keeps none. Any of the three may run, so all three must take the override.
SOFTMAX_SCALE_HOLDERS = ("flash_attention", "fused_attention", "unfused_attention")


def te_transformer_layer_kwargs(config: PretrainedConfig, layer_idx: int, *, fuse_qkv: bool) -> dict[str, Any]:
    """Every TransformerLayer argument we pass, by keyword (TE's positional order changes)."""
    return {
        **te_layer_kwargs(config, layer_idx),
        "hidden_dropout": 0.0,
        "bias": False,
        "fuse_qkv_params": fuse_qkv,
        "normalization": "RMSNorm",
        "activation": "swiglu",
        "attn_input_format": "bshd",
        "self_attn_mask_type": "causal",
        "params_dtype": torch.get_default_dtype(),  # HF's _from_config sets it to the model dtype
        "device": torch.get_default_device(),
    }


def set_softmax_scale(layer: torch.nn.Module, scale: float) -> None:
    """Override TE's 1/sqrt(kv_channels) where attention_scaling != 1; refuse if TE's layout moved."""
    core = layer.get_submodule("self_attention.core_attention")
    holders: dict[str, Any] = {name: getattr(core, name, None) for name in SOFTMAX_SCALE_HOLDERS}
    missing = [name for name, holder in holders.items() if not hasattr(holder, "softmax_scale")]
    if missing:
        version = te_api.format_version(te_api.imported_te_version())
        raise UnsupportedConfigError(
            f"TransformerEngine {version} keeps no softmax_scale on core_attention.{', core_attention.'.join(missing)} "
            "(TE 2.0-2.20 keeps it on its flash/fused/unfused attention backends): TE's layout moved, so rope "
            "types with attention_scaling != 1 (yarn, longrope) cannot be honoured by the te backend"
        )
    for holder in holders.values():
        holder.softmax_scale = scale


def te_decoder_class(*, fuse_qkv: bool = False) -> type:
    """Build the TE decoder-layer class (imports transformer_engine.pytorch now)."""
    import transformer_engine.pytorch as te

    class TELlamaDecoderLayer(HFDecoderCall, te.TransformerLayer):
        """A drop-in for LlamaDecoderLayer on TE's TransformerLayer."""

        backend = "te"
        fuse_qkv_params = fuse_qkv

        def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
            kwargs = te_transformer_layer_kwargs(config, layer_idx, fuse_qkv=fuse_qkv)
            super().__init__(**kwargs)
            keep_fresh_weights(self)
            self.layer_idx = layer_idx
            self.hf_config = config
            self.rope = shared_table_for(config)  # `bind_rope` re-points it at the model's own
            if self.rope.attention_scaling != 1.0:
                set_softmax_scale(self, attention_softmax_scale(self.rope, kwargs["kv_channels"]))

        def te_forward(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
            batch = self._batch(hidden_states, inputs)
            out = te.TransformerLayer.forward(
                self, batch.to_te(hidden_states), attention_mask=batch.attention_mask,
                self_attn_mask_type=batch.mask_type, rotary_pos_emb=batch.freqs,
                inference_params=batch.inference_params,
            )
            return batch.from_te(out)

        def _batch(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> TEBatch:
            """The first layer works out TE's view of the forward (and steps the KV cache); the others reuse it."""
            shared = self.rope.per_forward
            key = (id(inputs.attention_mask), id(inputs.position_ids), id(inputs.cache))
            if self.layer_idx == 0 or shared.get("te_batch") is None or shared["te_batch"].key != key:
                shared["te_batch"] = te_batch(te, self.rope, self.hf_config, hidden_states, inputs)
            return shared["te_batch"]

    if fuse_qkv:
        TELlamaDecoderLayer.__name__ = TELlamaDecoderLayer.__qualname__ = "TELlamaDecoderLayerFusedQKV"
    return TELlamaDecoderLayer

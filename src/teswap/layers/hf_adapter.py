"""What both TE-layout decoder layers share: fresh and loaded weights, and the ONE HF-facing forward.

HF's base models (LlamaModel, Qwen2Model, Gemma3TextModel, ...) call their layers as
    layer(hidden_states, attention_mask=..., position_embeddings=(cos, sin), position_ids=...,
          cache=..., use_cache=..., **kwargs)          (transformers 5.24; 5.17 says past_key_values=)
(Gemma3's without use_cache) and expects a tensor back. `HFDecoderCall.forward` is that call for both
backends: it sorts the arguments into `DecoderInputs` and refuses what a TE-layout layer cannot honour
(hf_inputs.py), so a swapped model never silently computes something else than the stock one, then hands them to the
backend's `te_forward`, which turns them into its attention's terms (the twin: HF's mask, Cache and
per-row RoPE; te: TE's padding mask, InferenceParams and RoPE table).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig

from teswap.errors import MappingError
from teswap.layers.hf_inputs import DecoderInputs, decoder_inputs
from teswap.layers.rope import RopeTable

# Set on a swapped layer by a checkpoint load under the swap (teswap.swap.loading); checked when it ends.
FROM_CHECKPOINT = "_teswap_from_checkpoint"
# Names the TE-only parameters (biases HF lacks) a layer holds at zero and never trains.
FROZEN_ZERO = "_teswap_frozen_zero"


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_groups_of(config: PretrainedConfig) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def keep_fresh_weights(layer: torch.nn.Module, frozen_zero: tuple[str, ...] = ()) -> None:
    """Mark a new layer's parameters initialised, so HF's post_init leaves them as the layer made them;
    freeze the TE-only parameters `frozen_zero` at zero.

    HF's _init_weights sets `.weight = 1` on any module whose class name contains "LayerNorm" (that
    would hit a fused QKV `LayerNormLinear.weight`) and Gemma's zeroes any "*RMSNorm*" module (TE's q/k
    norms, which hold 1 + w).
    """
    for param in layer.parameters():
        param._is_hf_initialized = True  # type: ignore[attr-defined]
    setattr(layer, FROZEN_ZERO, tuple(frozen_zero))
    freeze_zero(layer)


def freeze_zero(layer: torch.nn.Module) -> None:
    """Zero and freeze the layer's TE-only parameters; one a checkpoint load left on the meta device (no
    checkpoint holds it) is made anew, as zeros beside the layer's other weights."""
    names = getattr(layer, FROZEN_ZERO, ())
    real = next((p for p in layer.parameters() if p.device.type != "meta"), None)
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = layer.get_submodule(owner_name) if owner_name else layer
        param = getattr(owner, attr)
        if param.device.type == "meta" and real is not None:
            param = torch.nn.Parameter(torch.zeros(param.shape, dtype=param.dtype, device=real.device))
            param._is_hf_initialized = True  # type: ignore[attr-defined]
            setattr(owner, attr, param)
        elif param.device.type != "meta":
            with torch.no_grad():
                param.zero_()
        param.requires_grad_(False)


def check_loaded(layer: torch.nn.Module) -> None:
    """After a checkpoint load marked `layer`: raise MappingError if any of its weights was not loaded.

    transformers flags every parameter it loads (`_is_hf_initialized`); one it had to initialise
    instead was missing from the checkpoint, and a swapped layer must never run on random weights.
    """
    if not getattr(layer, FROM_CHECKPOINT, False):
        return
    setattr(layer, FROM_CHECKPOINT, False)  # checked once
    frozen = getattr(layer, FROZEN_ZERO, ())
    loaded = {name for name, param in layer.named_parameters() if getattr(param, "_is_hf_initialized", False)}
    # No HF checkpoint holds them (transformers initialises them as missing); a TE-layout checkpoint that
    # does was checked to hold zeros when the load began (teswap.swap.loading).
    freeze_zero(layer)
    missing = [name for name, _ in layer.named_parameters() if name not in loaded and name not in frozen]
    if missing:
        index = getattr(layer, "layer_idx", "?")
        raise MappingError(f"the checkpoint did not provide these weights of swapped layer {index}: "
                           f"{', '.join(missing)}; they would run uninitialised (TE layout names; see "
                           "teswap.swap.mapping for the HF keys they come from)")


class HFDecoderCall:
    """HF's decoder-layer call over a TE-layout layer; a backend's class puts this first in its bases."""

    rope: RopeTable  # the model's shared table (`bind_rope`)
    hf_config: PretrainedConfig  # read at call time: output_attentions may be set on the config

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        """nn.Module.train, after checking a checkpoint load (from_pretrained ends with model.eval())."""
        check_loaded(self)  # type: ignore[arg-type]
        return super().train(mode)  # type: ignore[misc]

    def te_forward(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        """The backend's TransformerLayer forward on bshd input, honouring `inputs` or refusing them."""
        raise NotImplementedError

    def forward(
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
        # use_cache needs nothing here: LlamaModel makes the cache; position_embeddings (HF's cos/sin)
        # are replaced by TE-layout freqs from the same inv_freq.
        inputs = decoder_inputs(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                cache=cache, past_key_values=past_key_values, kwargs=kwargs,
                                output_attentions_config=bool(getattr(self.hf_config, "output_attentions", False)),
                                has_router=getattr(self, "router_class", None) is not None)
        return self.te_forward(hidden_states, inputs)

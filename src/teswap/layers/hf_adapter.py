"""What both TE-layout decoder layers share: config validation, TE kwargs, and the ONE HF-facing forward.

HF's LlamaModel calls its decoder layers as
    layer(hidden_states, attention_mask=..., position_embeddings=(cos, sin), position_ids=...,
          cache=..., use_cache=..., **kwargs)          (transformers 5.24; 5.17 says past_key_values=)
and expects a tensor back. `HFDecoderCall.forward` is that call for both backends: it refuses what a
TE-layout layer cannot honour (`check_decoder_call`), so a swapped model never silently computes
something else than the stock one, takes the RoPE table for the positions, and hands the backend's
`te_forward` TE's arguments.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig

from teswap.errors import MappingError, UnsupportedConfigError, UnsupportedInputError
from teswap.layers.rope import RopeTable

# Set on a swapped layer by a checkpoint load under the swap (teswap.swap.loading); checked when it ends.
FROM_CHECKPOINT = "_teswap_from_checkpoint"
# Packed-sequence (varlen) arguments of flash-attention paths: TE would need cu_seqlens and a
# "padding_causal"/"thd" setup that these layers do not build.
_PACKED_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# Passed by some transformers versions and harmless: positions come from position_ids.
_IGNORED_KWARGS = ("cache_position", "output_attentions", "position_embeddings_local")


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def validate_config(config: PretrainedConfig) -> None:
    """Raise UnsupportedConfigError naming every config feature the TE-layout layers cannot express."""
    problems = []
    if getattr(config, "attention_bias", False):
        problems.append("attention_bias=True (q/k/v/o biases are not mapped; TE bias is all-or-nothing)")
    if getattr(config, "mlp_bias", False):
        problems.append("mlp_bias=True (gate/up/down biases are not mapped)")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={config.hidden_act!r} (the layer implements SwiGLU, i.e. silu)")
    if getattr(config, "pretraining_tp", 1) not in (1, None):
        problems.append(f"pretraining_tp={config.pretraining_tp}")
    heads, groups = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    if heads % groups:
        problems.append(f"{heads} attention heads do not split into {groups} key/value groups")
    if problems:
        raise UnsupportedConfigError("cannot swap this config: " + "; ".join(problems))


def te_layer_kwargs(config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
    """The TransformerLayer arguments for one Llama decoder layer (names as in TE's signature)."""
    validate_config(config)
    return {
        "hidden_size": config.hidden_size,
        "ffn_hidden_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_gqa_groups": config.num_key_value_heads or config.num_attention_heads,
        "kv_channels": head_dim_of(config),  # Gemma/Qwen3-style head_dim != hidden/heads
        "layernorm_epsilon": config.rms_norm_eps,
        "layer_number": layer_idx + 1,  # TE keys its KV cache by layer_number
        "attention_dropout": float(getattr(config, "attention_dropout", 0.0) or 0.0),
    }


def check_decoder_call(
    *,
    attention_mask: torch.Tensor | None,
    cache: Any,
    past_key_values: Any,
    use_cache: bool | None,
    seq_len: int,
    kwargs: dict[str, Any],
) -> None:
    """Raise UnsupportedInputError for anything in an HF decoder call the swapped layer cannot honour."""
    if use_cache or cache is not None or past_key_values is not None:
        raise UnsupportedInputError(
            "the swapped decoder layers have no KV cache yet: pass use_cache=False "
            "(generate(..., use_cache=False)); a cache would be created that these layers never update"
        )
    if attention_mask is not None and not is_plain_causal_mask(attention_mask, seq_len):
        raise UnsupportedInputError(
            "padding attention masks are not supported by the swapped layers (TE's causal mask type "
            "ignores the mask); run unpadded batches of equal length"
        )
    for name, value in kwargs.items():
        if name in _IGNORED_KWARGS or value is None or value is False:
            continue
        if name in _PACKED_KWARGS:
            raise UnsupportedInputError(f"packed sequences ({name}) are not supported by the swapped layers")
        raise UnsupportedInputError(f"the swapped decoder layer does not honour the argument {name}={value!r}")


def is_plain_causal_mask(mask: torch.Tensor, seq_len: int) -> bool:
    """True when a 4D HF mask (bool True=attend, or additive float) is exactly lower-triangular causal."""
    if mask.dim() != 4 or mask.shape[-2:] != (seq_len, seq_len):
        return False
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=mask.device).tril()
    attend = mask if mask.dtype == torch.bool else mask == 0
    return bool((attend == causal).all())


def check_loaded(layer: torch.nn.Module) -> None:
    """After a checkpoint load marked `layer`: raise MappingError if any of its weights was not loaded.

    transformers flags every parameter it loads (`_is_hf_initialized`); one it had to initialise
    instead was missing from the checkpoint, and a swapped layer must never run on random weights.
    """
    if not getattr(layer, FROM_CHECKPOINT, False):
        return
    setattr(layer, FROM_CHECKPOINT, False)  # checked once
    missing = [name for name, param in layer.named_parameters() if not getattr(param, "_is_hf_initialized", False)]
    if missing:
        index = getattr(layer, "layer_idx", "?")
        raise MappingError(f"the checkpoint did not provide these weights of swapped layer {index}: "
                           f"{', '.join(missing)}; they would run uninitialised (TE layout names; see "
                           "teswap.swap.mapping for the HF keys they come from)")


class HFDecoderCall:
    """HF's decoder-layer call over a TE-layout layer; a backend's class puts this first in its bases."""

    rope: RopeTable  # the model's shared table (`bind_rope`)

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        """nn.Module.train, after checking a checkpoint load (from_pretrained ends with model.eval())."""
        check_loaded(self)  # type: ignore[arg-type]
        return super().train(mode)  # type: ignore[misc]

    def te_forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor) -> torch.Tensor:
        """The backend's TransformerLayer forward on bshd input with TE's fp32 [s, 1, 1, d] freqs."""
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
        seq_len = hidden_states.shape[1]
        check_decoder_call(attention_mask=attention_mask, cache=cache, past_key_values=past_key_values,
                           use_cache=use_cache, seq_len=seq_len, kwargs=kwargs)
        return self.te_forward(hidden_states, self.rope.freqs(position_ids, seq_len, hidden_states.device))

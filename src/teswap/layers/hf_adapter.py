"""What both TE-layout decoder layers share: config validation, TE kwargs, and the ONE HF-facing forward.

HF's LlamaModel calls its decoder layers as
    layer(hidden_states, attention_mask=..., position_embeddings=(cos, sin), position_ids=...,
          cache=..., use_cache=..., **kwargs)          (transformers 5.24; 5.17 says past_key_values=)
and expects a tensor back. `HFDecoderCall.forward` is that call for both backends: it sorts the
arguments into `DecoderInputs` and refuses what a TE-layout layer cannot honour (hf_inputs.py), so a
swapped model never silently computes something else than the stock one, then hands them to the
backend's `te_forward`, which turns them into its attention's terms (the twin: HF's mask, Cache and
per-row RoPE; te: TE's padding mask, InferenceParams and RoPE table).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig

from teswap.errors import MappingError, UnsupportedConfigError
from teswap.layers.hf_inputs import DecoderInputs, decoder_inputs
from teswap.layers.rope import RopeTable
from teswap.layers.torch_layer import normal_init

# Set on a swapped layer by a checkpoint load under the swap (teswap.swap.loading); checked when it ends.
FROM_CHECKPOINT = "_teswap_from_checkpoint"


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
        # Fresh weights as HF initialises its linears (TE's own default std is 0.023).
        "init_method": normal_init(config.initializer_range),
        "output_layer_init_method": normal_init(config.initializer_range),
    }


def keep_fresh_weights(layer: torch.nn.Module) -> None:
    """Mark a new layer's parameters initialised, so HF's post_init leaves them as the layer made them.

    HF's _init_weights sets `.weight = 1` on any module whose class name contains "LayerNorm":
    that would hit a fused QKV `LayerNormLinear.weight`.
    """
    for param in layer.parameters():
        param._is_hf_initialized = True  # type: ignore[attr-defined]


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
                                output_attentions_config=bool(getattr(self.hf_config, "output_attentions", False)))
        return self.te_forward(hidden_states, inputs)

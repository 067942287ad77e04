"""What a swapped decoder layer is told by its model family: one `LayerPlan` per layer.

The layers know nothing of Llama, Qwen or Gemma. A family adapter (teswap.families) decides, for one
config and layer index, TE's arguments for the layer and the few facts around them; both backends
build from the same plan, so the twin and TE's modules always get the same arguments.

`te_kwargs` uses TransformerEngine's own argument names (TransformerLayer's, which MultiheadAttention
and LayerNormMLP share): hidden_size, ffn_hidden_size, num_attention_heads, num_gqa_groups, kv_channels,
layernorm_epsilon, layer_number, attention_dropout, hidden_dropout, bias, activation, normalization,
zero_centered_gamma, window_size, qk_norm_type, qk_norm_eps, qk_norm_before_rope,
qkv_weight_interleaved, init_method, output_layer_init_method. The backend adds what is its own
(fuse_qkv_params, params_dtype, device, attn_input_format, self_attn_mask_type).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

# The two ways a swapped layer is built from TE's modules.
TRANSFORMER_LAYER = "TransformerLayer"  # one te.pytorch.TransformerLayer (pre-norm attention + MLP)
COMPOSITE = "composite"  # MultiheadAttention + RMSNorm + LayerNormMLP + RMSNorm (sandwich norms)


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    """Everything a backend needs to build one swapped decoder layer of a family."""

    family: str
    layout: str  # TRANSFORMER_LAYER or COMPOSITE
    te_kwargs: dict[str, Any]
    rotary_factory: Callable[[Any], nn.Module]  # config -> the family's own HF rotary module
    rope_buffer: str = "inv_freq"  # the rotary module's inv_freq buffer this layer's RoPE reads
    rope_scaling_attr: str = "attention_scaling"  # the rotary module's cos/sin multiplier for this layer
    query_scale: float | None = None  # softmax scale before RoPE's attention scaling (None: 1/sqrt(head_dim))
    frozen_zero: tuple[str, ...] = ()  # TE-only parameters (biases HF lacks) held at zero, never trained
    te_versions: tuple[tuple[tuple[int, int], str], ...] = field(default=())  # (minimum TE, what needs it)

    @property
    def window_size(self) -> tuple[int, int] | None:
        """TE's (left, right) sliding window of this layer, or None for full causal attention."""
        window = self.te_kwargs.get("window_size")
        return None if window is None or tuple(window) in ((-1, -1), (-1, 0)) else tuple(window)

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
# MultiheadAttention + RMSNorm + an MoE block (TE's te_mixtral); a dense layer among MoE ones keeps
# MultiheadAttention + LayerNormMLP (teswap.layers.torch_moe)
MOE_COMPOSITE = "moe composite"

# The two expert implementations of an MoE layer (recorded in the config as `teswap_experts`).
HF_EXPERTS = "hf"  # HF's own sparse MoE block kept as it is: only attention and norms move to TE
GROUPED_EXPERTS = "grouped"  # TE's: router te.Linear, GroupedLinear experts, moe_permute / moe_unpermute
EXPERT_IMPLEMENTATIONS = (GROUPED_EXPERTS, HF_EXPERTS)


@dataclass(frozen=True, kw_only=True)
class MoEPlan:
    """One MoE layer's router and experts (HF's semantics; both backends build from it)."""

    num_experts: int
    top_k: int
    ffn_hidden_size: int  # per expert
    renormalize: bool  # top-k probabilities divided by their sum (Mixtral always; Qwen3-MoE: norm_topk_prob)
    scores_in_input_dtype: bool  # the top-k weights rounded to the input dtype before they scale (Qwen3-MoE)
    experts: str = GROUPED_EXPERTS  # HF_EXPERTS or GROUPED_EXPERTS
    # makes HF's own sparse MoE block for this layer's config (HF_EXPERTS), from the family's modeling module
    hf_block: Callable[[], nn.Module] | None = field(default=None, compare=False)


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
    moe: MoEPlan | None = None  # MOE_COMPOSITE: this layer's MoE block (None: a dense layer among MoE ones)

    @property
    def window_size(self) -> tuple[int, int] | None:
        """TE's (left, right) sliding window of this layer, or None for full causal attention."""
        window = self.te_kwargs.get("window_size")
        return None if window is None or tuple(window) in ((-1, -1), (-1, 0)) else tuple(window)

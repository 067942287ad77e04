"""TE's TransformerLayer, and the composite of TE modules, in pure PyTorch: TE's math on CPU or any GPU.

`TransformerLayer` matches `transformer_engine.pytorch.TransformerLayer` built with
normalization="RMSNorm" (module tree and parameter names as TE's):

    self_attention.layernorm_qkv.{layer_norm_weight, query_weight, key_weight, value_weight}
                                 (fused_qkv_params=True: .weight; bias=True adds the biases)
    self_attention.{q_norm, k_norm}.weight      (qk_norm_type="RMSNorm")
    self_attention.proj.weight
    layernorm_mlp.{layer_norm_weight, fc1_weight, fc2_weight}   (bias=True: fc1_bias, fc2_bias)

so one HF<->TE mapping per family serves both backends. `DecoderComposite` is what a family whose
layer TE's TransformerLayer cannot express (Gemma3's sandwich norms) is built of: the same
MultiheadAttention and LayerNormMLP, with an RMSNorm after each:

    self_attention, post_attention_layernorm.weight, layernorm_mlp, post_feedforward_layernorm.weight

The arguments are TE's own names (teswap.layers.plan); the math follows TE: norms fused ahead of the
QKV and fc1 GEMMs (fp32), one QKV GEMM, q/k norm, RoPE from fp32 freqs, windowed causal GQA attention,
the gated activation with its activation on the FIRST half of fc1's output, every GEMM through a
`GemmSite`, hidden dropout before each residual add.

Beyond TE's plain causal forward, attention also takes what an HF decoder call carries: HF's 4D mask
(True = attend, or additive float), per-row RoPE freqs ([s, b, 1, d]) and a KV-cache update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from teswap.layers.torch_attention import KVUpdate, MultiheadAttention
from teswap.layers.torch_modules import InitMethod, LayerNormMLP, RMSNorm, hidden_dropout

# TE arguments the twin implements (teswap.layers.plan); any other would be silently computed differently.
TWIN_ARGUMENTS = frozenset({
    "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_gqa_groups", "kv_channels", "layernorm_epsilon",
    "layer_number", "attention_dropout", "hidden_dropout", "init_method", "output_layer_init_method", "bias",
    "activation", "normalization", "zero_centered_gamma", "window_size", "qk_norm_type", "qk_norm_eps",
    "qk_norm_before_rope", "qkv_weight_interleaved"})
_FIXED = {"normalization": "RMSNorm"}


def _attention(kwargs: dict[str, Any], fuse_qkv_params: bool, softmax_scale: float | None) -> MultiheadAttention:
    return MultiheadAttention(
        hidden_size=kwargs["hidden_size"], num_attention_heads=kwargs["num_attention_heads"],
        num_gqa_groups=kwargs.get("num_gqa_groups") or kwargs["num_attention_heads"],
        kv_channels=kwargs.get("kv_channels") or kwargs["hidden_size"] // kwargs["num_attention_heads"],
        eps=kwargs["layernorm_epsilon"], fuse_qkv_params=fuse_qkv_params,
        qkv_weight_interleaved=kwargs.get("qkv_weight_interleaved", True),
        attention_dropout=kwargs.get("attention_dropout", 0.0), softmax_scale=softmax_scale,
        zero_centered_gamma=kwargs.get("zero_centered_gamma", False), bias=kwargs.get("bias", False),
        window_size=kwargs.get("window_size"), qk_norm_type=kwargs.get("qk_norm_type"),
        qk_norm_eps=kwargs.get("qk_norm_eps", 1e-6), qk_norm_before_rope=kwargs.get("qk_norm_before_rope", False),
        init_method=kwargs.get("init_method"), output_layer_init_method=kwargs.get("output_layer_init_method"),
    )


def _mlp(kwargs: dict[str, Any]) -> LayerNormMLP:
    return LayerNormMLP(
        kwargs["hidden_size"], kwargs["ffn_hidden_size"], eps=kwargs["layernorm_epsilon"],
        zero_centered_gamma=kwargs.get("zero_centered_gamma", False), activation=kwargs.get("activation", "swiglu"),
        bias=kwargs.get("bias", False), init_method=kwargs.get("init_method"),
        output_layer_init_method=kwargs.get("output_layer_init_method"),
    )


def _check_fixed(kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - TWIN_ARGUMENTS)
    if unknown:
        raise TypeError(f"the twin does not implement TE arguments {unknown}")
    for name, wanted in _FIXED.items():
        if kwargs.get(name, wanted) != wanted:
            raise ValueError(f"the twin implements {name}={wanted!r}, not {kwargs[name]!r}")


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer with TE's module tree: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, *, fuse_qkv_params: bool = False, softmax_scale: float | None = None,
                 **te_kwargs: Any) -> None:
        super().__init__()
        _check_fixed(te_kwargs)
        self.layer_number = te_kwargs.get("layer_number") or 1
        self.hidden_dropout = float(te_kwargs.get("hidden_dropout", 0.0) or 0.0)
        self.self_attention = _attention(te_kwargs, fuse_qkv_params, softmax_scale)
        self.layernorm_mlp = _mlp(te_kwargs)

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor,
                attention_mask: torch.Tensor | None = None, kv_update: KVUpdate | None = None, *,
                own_window: bool = True) -> torch.Tensor:
        attention = self.self_attention(hidden_states, rotary_pos_emb, attention_mask, kv_update,
                                        own_window=own_window)
        hidden_states = hidden_states + hidden_dropout(attention, self.hidden_dropout, self.training)
        return hidden_states + hidden_dropout(self.layernorm_mlp(hidden_states), self.hidden_dropout, self.training)


class DecoderComposite(nn.Module):
    """MultiheadAttention + RMSNorm + LayerNormMLP + RMSNorm (sandwich norms): not a TransformerLayer."""

    def __init__(self, *, fuse_qkv_params: bool = False, softmax_scale: float | None = None,
                 **te_kwargs: Any) -> None:
        super().__init__()
        _check_fixed(te_kwargs)
        self.layer_number = te_kwargs.get("layer_number") or 1
        hidden, eps = te_kwargs["hidden_size"], te_kwargs["layernorm_epsilon"]
        centred = te_kwargs.get("zero_centered_gamma", False)
        self.self_attention = _attention(te_kwargs, fuse_qkv_params, softmax_scale)
        self.post_attention_layernorm = RMSNorm(hidden, eps=eps, zero_centered_gamma=centred)
        self.layernorm_mlp = _mlp(te_kwargs)
        self.post_feedforward_layernorm = RMSNorm(hidden, eps=eps, zero_centered_gamma=centred)

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor,
                attention_mask: torch.Tensor | None = None, kv_update: KVUpdate | None = None, *,
                own_window: bool = True) -> torch.Tensor:
        attention = self.self_attention(hidden_states, rotary_pos_emb, attention_mask, kv_update,
                                        own_window=own_window)
        hidden_states = hidden_states + self.post_attention_layernorm(attention)
        return hidden_states + self.post_feedforward_layernorm(self.layernorm_mlp(hidden_states))


__all__ = ["DecoderComposite", "InitMethod", "TransformerLayer"]

"""A stand-in `transformer_engine.pytorch` for testing OUR TE glue on CPU; it is not TE.

Its TransformerLayer checks the arguments our code passes against TE's real signatures (names below,
recorded as data from NVIDIA/TransformerEngine transformer_engine/pytorch/transformer.py at
2.20.0.dev0, commit d0067d0) and the rotary_pos_emb checks of TE's fused RoPE kernel
(csrc/extensions/apply_rope.cpp), mirrors TE's module tree (core_attention with its three backends
holding softmax_scale, `_extra_state` on TE's base modules), and delegates the math to teswap's
pure-PyTorch twin. A test passing here says our glue calls TE's API as TE's source declares it; it
says nothing about TE's kernels, and no number from it is a TE number.
"""

from __future__ import annotations

import enum
import sys
import types

import torch
from torch import nn

from teswap.layers import torch_layer

TRANSFORMER_LAYER_INIT_PARAMS = (
    "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_gqa_groups", "layernorm_epsilon",
    "hidden_dropout", "attention_dropout", "init_method", "output_layer_init_method", "layer_number",
    "kv_channels", "self_attn_mask_type", "window_size", "bottom_right_diagonal", "enc_dec_attn_mask_type",
    "enc_dec_bottom_right_diagonal", "enc_dec_window_size", "tp_group", "tp_size", "params_dtype",
    "get_rng_state_tracker", "fuse_wgrad_accumulation", "seq_length", "micro_batch_size", "sequence_parallel",
    "apply_residual_connection_post_layernorm", "output_layernorm", "parallel_attention_mlp", "layer_type",
    "drop_path_rate", "set_parallel_mode", "fuse_qkv_params", "rotary_pos_interleaved", "zero_centered_gamma",
    "qkv_weight_interleaved", "ub_tp_comm_overlap", "ub_overlap_ag", "ub_overlap_rs", "ub_overlap_rs_dgrad",
    "ub_bulk_dgrad", "ub_bulk_wgrad", "bias", "activation", "activation_params", "normalization", "device",
    "attn_input_format", "name", "qk_norm_type", "qk_norm_eps", "qk_norm_before_rope", "softmax_type",
)
TRANSFORMER_LAYER_FORWARD_PARAMS = (
    "hidden_states", "attention_mask", "self_attn_mask_type", "window_size", "bottom_right_diagonal",
    "encoder_output", "enc_dec_attn_mask", "enc_dec_attn_mask_type", "enc_dec_window_size",
    "enc_dec_bottom_right_diagonal", "is_first_microbatch", "checkpoint_core_attention", "inference_params",
    "rotary_pos_emb", "core_attention_bias_type", "core_attention_bias", "alibi_slopes", "cu_seqlens_q",
    "cu_seqlens_kv", "cu_seqlens_q_padded", "cu_seqlens_kv_padded", "max_seqlen_q", "max_seqlen_kv",
    "fast_zero_fill", "pad_between_seqs",
)
TE_DEFAULTS = {"num_gqa_groups": None, "layernorm_epsilon": 1e-5, "hidden_dropout": 0.1,
               "attention_dropout": 0.1, "layer_number": None, "kv_channels": None,
               "self_attn_mask_type": "causal", "params_dtype": None, "fuse_qkv_params": False,
               "zero_centered_gamma": False, "bias": True, "activation": "gelu", "normalization": "LayerNorm",
               "device": "cuda", "attn_input_format": "sbhd"}
# Only the configuration teswap's Llama layers use is emulated; anything else is an error here.
EMULATED = {"normalization": "RMSNorm", "activation": "swiglu", "bias": False, "attn_input_format": "bshd",
            "self_attn_mask_type": "causal", "hidden_dropout": 0.0}


class _ExtraState:
    """TE's base modules (LayerNormLinear, Linear, LayerNormMLP, DotProductAttention) carry _extra_state."""

    def get_extra_state(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)  # what TE returns when no FP8 state exists

    def set_extra_state(self, state) -> None:
        pass


class _Backend(nn.Module):
    def __init__(self, softmax_scale: float) -> None:
        super().__init__()
        self.softmax_scale = softmax_scale


class DotProductAttention(_ExtraState, nn.Module):
    def __init__(self, softmax_scale: float) -> None:
        super().__init__()
        self.softmax_scale = softmax_scale
        self.flash_attention = _Backend(softmax_scale)
        self.fused_attention = _Backend(softmax_scale)
        self.unfused_attention = _Backend(softmax_scale)

    def effective_scale(self) -> float:
        scales = {self.softmax_scale, *(b.softmax_scale for b in (self.flash_attention, self.fused_attention,
                                                                   self.unfused_attention))}
        assert len(scales) == 1, f"softmax_scale differs between TE's attention backends: {scales}"
        return scales.pop()


def _with_extra_state(module: nn.Module) -> None:
    module.__class__ = type(module.__class__.__name__, (_ExtraState, module.__class__), {})


class TransformerLayer(torch_layer.TransformerLayer):
    """Checks arguments against TE's signature; computes with teswap's twin."""

    def __init__(self, hidden_size, ffn_hidden_size, num_attention_heads, **kwargs) -> None:
        unknown = sorted(set(kwargs) - set(TRANSFORMER_LAYER_INIT_PARAMS))
        if unknown:
            raise TypeError(f"TransformerLayer.__init__() got unexpected keyword arguments {unknown}")
        args = {**TE_DEFAULTS, **kwargs}
        for name, wanted in EMULATED.items():
            if args[name] != wanted:
                raise NotImplementedError(f"stand-in emulates only {name}={wanted!r}, got {args[name]!r}")
        if args["layer_number"] is not None and args["layer_number"] <= 0:
            raise ValueError("layer_number must be > 0")
        kv_channels = args["kv_channels"] or hidden_size // num_attention_heads
        with torch.device(args["device"]):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(args["params_dtype"] or previous)
            try:
                super().__init__(
                    hidden_size=hidden_size, ffn_hidden_size=ffn_hidden_size,
                    num_attention_heads=num_attention_heads,
                    num_gqa_groups=args["num_gqa_groups"] or num_attention_heads, kv_channels=kv_channels,
                    layernorm_epsilon=args["layernorm_epsilon"], layer_number=args["layer_number"] or 1,
                    fuse_qkv_params=args["fuse_qkv_params"], attention_dropout=args["attention_dropout"],
                )
            finally:
                torch.set_default_dtype(previous)
        self.init_kwargs = {"hidden_size": hidden_size, "ffn_hidden_size": ffn_hidden_size,
                            "num_attention_heads": num_attention_heads, **kwargs}
        self.forward_calls: list[dict] = []
        attention = self.self_attention
        attention.core_attention = DotProductAttention(kv_channels**-0.5)  # TE: always 1/sqrt(kv_channels)
        for module in (attention.layernorm_qkv, attention.proj, self.layernorm_mlp):
            _with_extra_state(module)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        unknown = sorted(set(kwargs) - set(TRANSFORMER_LAYER_FORWARD_PARAMS))
        if unknown:
            raise TypeError(f"TransformerLayer.forward() got unexpected keyword arguments {unknown}")
        freqs = kwargs.get("rotary_pos_emb")
        seq_len = hidden_states.shape[1]  # bshd
        if freqs is not None:  # TORCH_CHECKs of TE's fused RoPE
            assert freqs.dim() == 4, "expected 4D freqs tensor"
            assert freqs.size(1) == 1 and freqs.size(2) == 1, "expected the second and third dims of freqs equal 1"
            assert freqs.dtype == torch.float32, "Dtype of the freqs tensor must be float"
            assert freqs.size(0) >= seq_len, "expected freqs tensor has a longer sequence length than input"
        self.forward_calls.append(kwargs)
        self.self_attention.softmax_scale = self.self_attention.core_attention.effective_scale()
        return super().forward(hidden_states, freqs[:seq_len])


# transformer_engine/common/recipe/__init__.py (2.20.0.dev0): constructor fields of each recipe.
RECIPE_FIELDS = {
    "DelayedScaling": ("margin", "fp8_format", "amax_history_len", "amax_compute_algo",
                       "scaling_factor_compute_algo", "reduce_amax", "fp8_dpa", "fp8_mha", "backward_override"),
    "Float8CurrentScaling": ("use_power_2_scales", "fp8_format", "fp8_gemm_fprop", "fp8_gemm_dgrad",
                             "fp8_gemm_wgrad", "fp8_dpa", "fp8_mha", "backward_override"),
    "Float8BlockScaling": ("use_f32_scales", "fp8_format", "x_block_scaling_dim", "w_block_scaling_dim",
                           "grad_block_scaling_dim", "fp8_gemm_fprop", "fp8_gemm_dgrad", "fp8_gemm_wgrad",
                           "fp8_dpa", "fp8_mha", "backward_override"),
    "MXFP8BlockScaling": ("margin", "fp8_format", "fp8_dpa", "fp8_mha", "backward_override",
                          "enable_2d_quantization"),
}
AUTOCAST_PARAMS = ("enabled", "calibrating", "recipe", "amax_reduction_group", "_graph")


class Format(enum.Enum):
    E2M1 = "E2M1"
    E4M3 = "E4M3"
    E5M2 = "E5M2"
    HYBRID = "HYBRID"


def _recipe_class(name: str) -> type:
    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(RECIPE_FIELDS[name]))
        if unknown:
            raise TypeError(f"{name}.__init__() got unexpected keyword arguments {unknown}")
        self.kwargs = kwargs

    return type(name, (), {"__init__": __init__})


def _to_emulation(recipe):
    """Map a stand-in TE recipe onto teswap's emulation, so the twin's GEMMs run the same recipe."""
    from teswap.precision import recipes as fp8

    kind, args = type(recipe).__name__, recipe.kwargs
    fmt = fp8.Format[args.get("fp8_format", Format.HYBRID).name]
    if kind == "DelayedScaling":
        return fp8.DelayedScaling(margin=args.get("margin", 0), fp8_format=fmt,
                                  amax_history_len=args.get("amax_history_len", 1024),
                                  amax_compute_algo=args.get("amax_compute_algo", "max"))
    if kind == "Float8CurrentScaling":
        return fp8.Float8CurrentScaling(fp8_format=fmt)
    raise NotImplementedError(f"the stand-in emulates no {kind}")


AUTOCAST_CALLS: list[dict] = []


def autocast(**kwargs):
    """TE's autocast(enabled, calibrating, recipe, amax_reduction_group): checked, then our emulation."""
    from teswap.precision import emulation as fp8

    unknown = sorted(set(kwargs) - set(AUTOCAST_PARAMS))
    if unknown:
        raise TypeError(f"autocast() got unexpected keyword arguments {unknown}")
    AUTOCAST_CALLS.append(kwargs)
    return fp8.fp8_autocast(_to_emulation(kwargs["recipe"]), enabled=kwargs.get("enabled", True))


def is_fp8_available(return_reason: bool = False):
    return (True, "") if return_reason else True


def install(monkeypatch) -> types.ModuleType:
    """Put the stand-in at `transformer_engine.pytorch` (and `.common.recipe`) in sys.modules for one test."""
    package = types.ModuleType("transformer_engine")
    pytorch = types.ModuleType("transformer_engine.pytorch")
    common = types.ModuleType("transformer_engine.common")
    recipe = types.ModuleType("transformer_engine.common.recipe")
    recipe.Format = Format
    for name in RECIPE_FIELDS:
        setattr(recipe, name, _recipe_class(name))
    pytorch.TransformerLayer = TransformerLayer
    pytorch.autocast = autocast
    pytorch.is_fp8_available = is_fp8_available
    pytorch.__teswap_standin__ = True
    package.pytorch, package.common, common.recipe = pytorch, common, recipe
    AUTOCAST_CALLS.clear()
    for name, module in (("transformer_engine", package), ("transformer_engine.pytorch", pytorch),
                         ("transformer_engine.common", common), ("transformer_engine.common.recipe", recipe)):
        monkeypatch.setitem(sys.modules, name, module)
    return pytorch

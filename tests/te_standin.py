"""A stand-in `transformer_engine` for testing OUR TE glue on CPU, one API generation at a time; it is not TE.

Each generation (GENERATIONS) is the surface of one TE release, recorded as data from
NVIDIA/TransformerEngine at that tag: TransformerLayer's __init__/forward keywords
(transformer_engine/pytorch/transformer.py), the recipe classes and their constructor fields and
QParams class attributes (transformer_engine/common/recipe/__init__.py), the autocast entry points
and availability checks (transformer_engine/pytorch/{fp8,quantization,__init__}.py):

    2.1   fp8_autocast(fp8_recipe=); FP8GlobalStateManager.is_{fp8,mxfp8}_available(); no current/block scaling
    2.5   + Float8CurrentScaling (2.2, power-of-2/epsilon only via QParams class attributes),
          Float8BlockScaling and FP8GlobalStateManager.is_fp8_block_scaling_available (2.3)
    2.9   + autocast(recipe=) and is_*_available(return_reason=) at transformer_engine.pytorch;
          Float8CurrentScaling(use_power_2_scales=) (2.8); fp8_autocast and .fp8 now warn (deprecated)
    2.20  main (2.20.0.dev0, d0067d0): + backward_override on every recipe (2.15)

The TransformerLayer also mirrors TE's module tree (core_attention whose flash/fused/unfused
backends hold softmax_scale, `_extra_state` on TE's base modules) and the rotary_pos_emb checks of
TE's fused RoPE kernel (csrc/extensions/apply_rope.cpp, unchanged 2.0-2.20), and delegates the math
to teswap's pure-PyTorch twin; a stand-in recipe runs as the twin's emulation of what TE's modules
read from it. A test passing here says our glue calls each TE generation's API as its source
declares it; it says nothing about TE's kernels, and no number from it is a TE number.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from teswap.layers import torch_attention, torch_layer, torch_modules, torch_moe

# --- TE's signatures, per release (names only; order as in TE) ------------------------------------

# main, 2.20.0.dev0 (d0067d0)
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
    "NVFP4BlockScaling": ("disable_rht", "disable_stochastic_rounding", "disable_2d_quantization",
                          "row_scaled_activation", "nvfp4_4over6", "nvfp4_4over6_e4m3_use_256",
                          "nvfp4_4over6_err_mode", "fp4_format", "fp8_format", "fp8_dpa", "fp8_mha",
                          "backward_override"),
}
AUTOCAST_PARAMS = ("enabled", "calibrating", "recipe", "amax_reduction_group", "_graph")
FP8_AUTOCAST_PARAMS = ("enabled", "calibrating", "fp8_recipe", "fp8_group", "_graph")  # 2.0 ... 2.20

# v2.1 (unchanged from v2.0)
_LAYER_INIT_2_1 = tuple(p for p in TRANSFORMER_LAYER_INIT_PARAMS if p not in {
    "bottom_right_diagonal", "enc_dec_bottom_right_diagonal", "rotary_pos_interleaved", "activation_params",
    "name", "qk_norm_type", "qk_norm_eps", "qk_norm_before_rope", "softmax_type"})
_LAYER_FORWARD_2_1 = tuple(p for p in TRANSFORMER_LAYER_FORWARD_PARAMS if p not in {
    "bottom_right_diagonal", "enc_dec_bottom_right_diagonal", "cu_seqlens_q_padded", "cu_seqlens_kv_padded",
    "pad_between_seqs"})
# v2.5: + name (2.3), rotary_pos_interleaved (2.4), use_qk_norm and qk_norm_eps (2.5); forward +
# pad_between_seqs (2.2), cu_seqlens_{q,kv}_padded (2.5)
_LAYER_INIT_2_5 = (*_LAYER_INIT_2_1, "rotary_pos_interleaved", "name", "use_qk_norm", "qk_norm_eps")
_LAYER_FORWARD_2_5 = (*_LAYER_FORWARD_2_1, "cu_seqlens_q_padded", "cu_seqlens_kv_padded", "pad_between_seqs")
# v2.9: use_qk_norm replaced by qk_norm_type + qk_norm_before_rope (2.7), + softmax_type (2.8)
_LAYER_INIT_2_9 = (*(p for p in _LAYER_INIT_2_5 if p != "use_qk_norm"), "qk_norm_type", "qk_norm_before_rope",
                   "softmax_type")

# MultiheadAttention (attention/multi_head_attention.py; 2.1: attention.py), LayerNormMLP and the op-based
# RMSNorm (module/rmsnorm.py; its **kwargs go to ops.RMSNorm: device, dtype, sm_margin), main d0067d0
MHA_INIT_PARAMS = (
    "hidden_size", "num_attention_heads", "kv_channels", "attention_dropout", "layernorm_epsilon", "init_method",
    "output_layer_init_method", "layer_number", "attn_mask_type", "window_size", "bottom_right_diagonal", "tp_group",
    "tp_size", "num_gqa_groups", "fuse_wgrad_accumulation", "get_rng_state_tracker", "sequence_parallel",
    "params_dtype", "return_bias", "return_layernorm_output", "input_layernorm", "attention_type",
    "set_parallel_mode", "fuse_qkv_params", "zero_centered_gamma", "qkv_weight_interleaved", "rotary_pos_interleaved",
    "ub_overlap_ag", "ub_overlap_rs", "ub_overlap_rs_dgrad", "ub_bulk_dgrad", "ub_bulk_wgrad", "bias",
    "normalization", "device", "qkv_format", "name", "qk_norm_type", "qk_norm_eps", "qk_norm_before_rope",
    "seq_length", "micro_batch_size", "softmax_type",
)
MHA_FORWARD_PARAMS = (
    "hidden_states", "attention_mask", "encoder_output", "attn_mask_type", "window_size", "bottom_right_diagonal",
    "is_first_microbatch", "checkpoint_core_attention", "inference_params", "rotary_pos_emb",
    "core_attention_bias_type", "core_attention_bias", "alibi_slopes", "cu_seqlens_q", "cu_seqlens_kv",
    "cu_seqlens_q_padded", "cu_seqlens_kv_padded", "max_seqlen_q", "max_seqlen_kv", "fast_zero_fill",
    "pad_between_seqs",
)
MLP_INIT_PARAMS = (
    "hidden_size", "ffn_hidden_size", "eps", "sequence_parallel", "return_bias", "get_rng_state_tracker", "tp_group",
    "tp_size", "init_method", "bias", "normalization", "activation", "activation_params", "output_layer_init_method",
    "fuse_wgrad_accumulation", "params_dtype", "return_layernorm_output", "return_layernorm_output_gathered",
    "seq_length", "micro_batch_size", "set_parallel_mode", "zero_centered_gamma", "device", "ub_overlap_ag", "name",
    "ub_overlap_rs", "ub_overlap_rs_dgrad", "ub_bulk_dgrad", "ub_bulk_wgrad", "delay_wgrad_compute",
    "symmetric_ar_type", "checkpoint",
)
RMSNORM_INIT_PARAMS = ("normalized_shape", "eps", "sequence_parallel", "params_dtype", "zero_centered_gamma",
                       "hidden_size", "device", "dtype", "sm_margin")  # 2.0 ... 2.20
_MHA_INIT_2_1 = tuple(p for p in MHA_INIT_PARAMS if p not in {
    "bottom_right_diagonal", "rotary_pos_interleaved", "name", "qk_norm_type", "qk_norm_eps", "qk_norm_before_rope",
    "seq_length", "micro_batch_size", "softmax_type"})
_MHA_FORWARD_2_1 = tuple(p for p in MHA_FORWARD_PARAMS if p not in {
    "bottom_right_diagonal", "cu_seqlens_q_padded", "cu_seqlens_kv_padded", "pad_between_seqs"})
# 2.5: + rotary_pos_interleaved, name, use_qk_norm, qk_norm_eps, seq_length, micro_batch_size; forward as 2.9
_MHA_INIT_2_5 = (*_MHA_INIT_2_1[:_MHA_INIT_2_1.index("ub_overlap_ag")], "rotary_pos_interleaved",
                 *_MHA_INIT_2_1[_MHA_INIT_2_1.index("ub_overlap_ag"):], "name", "use_qk_norm", "qk_norm_eps",
                 "seq_length", "micro_batch_size")
_MHA_FORWARD_2_5 = tuple(p for p in MHA_FORWARD_PARAMS if p != "bottom_right_diagonal")
# 2.9: use_qk_norm -> qk_norm_type + qk_norm_before_rope (2.7), + softmax_type (2.8)
_MHA_INIT_2_9 = tuple(p for p in MHA_INIT_PARAMS if p != "bottom_right_diagonal")
_MLP_INIT_2_1 = tuple(p for p in MLP_INIT_PARAMS if p not in {
    "activation_params", "name", "delay_wgrad_compute", "symmetric_ar_type", "checkpoint"})
_MLP_INIT_2_5 = tuple(p for p in MLP_INIT_PARAMS if p not in {"activation_params", "checkpoint"})

# te.Linear (module/linear.py), GroupedLinear (module/grouped_linear.py), moe_permute / moe_unpermute
# (permutation.py), main d0067d0; the MoE composite's router and experts (te_mixtral's layer)
LINEAR_INIT_PARAMS = (
    "in_features", "out_features", "sequence_parallel", "fuse_wgrad_accumulation", "tp_group", "tp_size",
    "get_rng_state_tracker", "rng_tracker_name", "init_method", "bias", "return_bias", "params_dtype",
    "parallel_mode", "parameters_split", "device", "ub_overlap_ag", "ub_overlap_rs", "ub_overlap_rs_dgrad",
    "ub_bulk_dgrad", "ub_bulk_wgrad", "ub_name", "delay_wgrad_compute", "symmetric_ar_type", "save_original_input",
    "name")
LINEAR_FORWARD_PARAMS = ("inp", "is_first_microbatch", "fp8_output", "fp8_grad")  # 2.1 ... 2.20
GROUPED_INIT_PARAMS = (
    "num_gemms", "in_features", "out_features", "sequence_parallel", "fuse_wgrad_accumulation", "tp_group",
    "tp_size", "get_rng_state_tracker", "rng_tracker_name", "init_method", "bias", "return_bias", "params_dtype",
    "parallel_mode", "device", "ub_overlap_rs", "ub_overlap_ag", "ub_name", "delay_wgrad_compute",
    "save_original_input", "single_grouped_weight", "single_grouped_bias", "name", "use_grouped_tensor")
GROUPED_FORWARD_PARAMS = ("inp", "m_splits", "is_first_microbatch", "out", "dgrad_out")
PERMUTE_PARAMS = ("inp", "routing_map", "num_out_tokens", "max_token_num", "map_type")  # 2.1 ... 2.20
UNPERMUTE_PARAMS = ("inp", "row_id_map", "merging_probs", "restore_shape", "map_type", "probs", "pad_offsets")
_LINEAR_INIT_2_1 = LINEAR_INIT_PARAMS[:LINEAR_INIT_PARAMS.index("delay_wgrad_compute")]
_LINEAR_INIT_2_5 = tuple(p for p in LINEAR_INIT_PARAMS if p != "save_original_input")
_GROUPED_INIT_2_1 = GROUPED_INIT_PARAMS[:GROUPED_INIT_PARAMS.index("delay_wgrad_compute")]
_GROUPED_INIT_2_5 = GROUPED_INIT_PARAMS[:GROUPED_INIT_PARAMS.index("save_original_input")]
_GROUPED_INIT_2_9 = GROUPED_INIT_PARAMS[:GROUPED_INIT_PARAMS.index("single_grouped_weight")]
_GROUPED_FORWARD_2_1 = GROUPED_FORWARD_PARAMS[:3]
_UNPERMUTE_2_1 = UNPERMUTE_PARAMS[:-1]

_DELAYED_2_1 = ("margin", "interval", "fp8_format", "amax_history_len", "amax_compute_algo",
                "scaling_factor_compute_algo", "reduce_amax", "fp8_dpa", "fp8_mha")  # `interval` gone in 2.2
_MXFP8_2_1 = ("margin", "fp8_format", "fp8_dpa", "fp8_mha")
_CURRENT_2_5 = ("fp8_format", "fp8_gemm_fprop", "fp8_gemm_dgrad", "fp8_gemm_wgrad", "fp8_dpa", "fp8_mha")
_BLOCK_2_5 = tuple(f for f in RECIPE_FIELDS["Float8BlockScaling"] if f != "backward_override")
# NVFP4BlockScaling 2.8 ... 2.15 (backward_override 2.15, row_scaled_activation 2.16, 4over6 2.17)
_NVFP4_2_9 = ("disable_rht", "disable_stochastic_rounding", "disable_2d_quantization", "fp4_format", "fp8_format",
              "fp8_dpa", "fp8_mha")
QPARAMS_CLASS_ATTRS = ("fp8_quant_fwd_inp", "fp8_quant_fwd_weight", "fp8_quant_bwd_grad")  # 2.2 ... 2.20


@dataclass(frozen=True)
class Generation:
    """One TE release's API surface, as recorded from its source."""

    version: str  # transformer_engine.__version__
    layer_init: tuple[str, ...]
    layer_forward: tuple[str, ...]
    recipes: dict[str, tuple[str, ...]]  # recipe class -> constructor (dataclass) fields
    qparams: tuple[str, ...]  # recipe.QParams fields; () before 2.2
    autocast: bool  # transformer_engine.pytorch.autocast(recipe=...) exists (2.9+)
    top_level_checks: bool  # is_*_available(return_reason=) at transformer_engine.pytorch (2.9+)
    checks: tuple[str, ...]  # the is_*_available checks this release has
    mha_init: tuple[str, ...] = MHA_INIT_PARAMS
    mha_forward: tuple[str, ...] = MHA_FORWARD_PARAMS
    mlp_init: tuple[str, ...] = MLP_INIT_PARAMS
    linear_init: tuple[str, ...] = LINEAR_INIT_PARAMS
    grouped_init: tuple[str, ...] = GROUPED_INIT_PARAMS
    grouped_forward: tuple[str, ...] = GROUPED_FORWARD_PARAMS
    unpermute: tuple[str, ...] = UNPERMUTE_PARAMS


GENERATIONS = {
    "2.1": Generation("2.1.0", _LAYER_INIT_2_1, _LAYER_FORWARD_2_1,
                      {"DelayedScaling": _DELAYED_2_1, "MXFP8BlockScaling": _MXFP8_2_1}, (), False, False,
                      ("is_fp8_available", "is_mxfp8_available"), _MHA_INIT_2_1, _MHA_FORWARD_2_1, _MLP_INIT_2_1,
                      _LINEAR_INIT_2_1, _GROUPED_INIT_2_1, _GROUPED_FORWARD_2_1, _UNPERMUTE_2_1),
    "2.5": Generation("2.5.0", _LAYER_INIT_2_5, _LAYER_FORWARD_2_5,
                      {"DelayedScaling": _DELAYED_2_1[:1] + _DELAYED_2_1[2:], "MXFP8BlockScaling": _MXFP8_2_1,
                       "Float8CurrentScaling": _CURRENT_2_5, "Float8BlockScaling": _BLOCK_2_5},
                      ("power_2_scale", "amax_epsilon"), False, False,
                      ("is_fp8_available", "is_mxfp8_available", "is_fp8_block_scaling_available"),
                      _MHA_INIT_2_5, _MHA_FORWARD_2_5, _MLP_INIT_2_5, _LINEAR_INIT_2_5, _GROUPED_INIT_2_5,
                      _GROUPED_FORWARD_2_1, _UNPERMUTE_2_1),
    "2.9": Generation("2.9.0", _LAYER_INIT_2_9, _LAYER_FORWARD_2_5,
                      {"DelayedScaling": _DELAYED_2_1[:1] + _DELAYED_2_1[2:], "MXFP8BlockScaling": _MXFP8_2_1,
                       "Float8CurrentScaling": ("use_power_2_scales", *_CURRENT_2_5), "Float8BlockScaling": _BLOCK_2_5,
                       "NVFP4BlockScaling": _NVFP4_2_9},
                      ("power_2_scale", "amax_epsilon", "random_hadamard_transform", "stochastic_rounding",
                       "fp4_2d_quantization"), True, True,
                      ("is_fp8_available", "is_mxfp8_available", "is_fp8_block_scaling_available",
                       "is_nvfp4_available"), _MHA_INIT_2_9, _MHA_FORWARD_2_5, _MLP_INIT_2_5,
                      LINEAR_INIT_PARAMS, _GROUPED_INIT_2_9, _GROUPED_FORWARD_2_1, _UNPERMUTE_2_1),
    "2.20": Generation("2.20.0.dev0+d0067d0", TRANSFORMER_LAYER_INIT_PARAMS, TRANSFORMER_LAYER_FORWARD_PARAMS,
                       RECIPE_FIELDS, ("power_2_scale", "amax_epsilon", "random_hadamard_transform",
                                       "stochastic_rounding", "fp4_2d_quantization"), True, True,
                       ("is_fp8_available", "is_mxfp8_available", "is_fp8_block_scaling_available",
                        "is_nvfp4_available")),
}
LATEST = "2.20"

TE_DEFAULTS = {"num_gqa_groups": None, "layernorm_epsilon": 1e-5, "hidden_dropout": 0.1,
               "attention_dropout": 0.1, "layer_number": None, "kv_channels": None,
               "self_attn_mask_type": "causal", "params_dtype": None, "fuse_qkv_params": False,
               "zero_centered_gamma": False, "bias": True, "activation": "gelu", "normalization": "LayerNorm",
               "device": "cuda", "attn_input_format": "sbhd", "window_size": None, "qkv_weight_interleaved": True,
               "qk_norm_type": None, "qk_norm_eps": 1e-6, "qk_norm_before_rope": False, "use_qk_norm": False,
               # MultiheadAttention's and LayerNormMLP's own
               "attn_mask_type": "causal", "qkv_format": "sbhd", "input_layernorm": False, "attention_type": "self",
               "return_bias": False, "eps": 1e-5}  # the same in 2.0 ... 2.20
# Only what teswap's layers use is emulated (the twin implements it); anything else is an error here.
EMULATED = {"normalization": {"RMSNorm"}, "activation": {"swiglu", "geglu"}, "attn_input_format": {"bshd"},
            "qkv_format": {"bshd"}, "self_attn_mask_type": {"causal"}, "attn_mask_type": {"causal"},
            "qk_norm_type": {None, "RMSNorm"}, "use_qk_norm": {False}, "attention_type": {"self"},
            "return_bias": {False}}
# TE arguments handed to the twin as they are (the twin takes TE's names)
_TWIN_ARGUMENTS = ("hidden_dropout", "attention_dropout", "init_method", "output_layer_init_method", "bias",
                   "activation", "normalization", "zero_centered_gamma", "window_size", "qk_norm_type",
                   "qk_norm_eps", "qk_norm_before_rope", "qkv_weight_interleaved")


def _checked_args(kind: str, allowed: tuple[str, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """TE's defaults filled in; a keyword this release lacks, or a value the stand-in cannot emulate, raises."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{kind}.__init__() got unexpected keyword arguments {unknown}")
    args = {**TE_DEFAULTS, **kwargs}
    for name, wanted in EMULATED.items():
        if name in allowed and args[name] not in wanted:
            raise NotImplementedError(f"stand-in emulates only {name} in {sorted(map(str, wanted))}, "
                                      f"got {args[name]!r}")
    window = args["window_size"]
    if window is not None and tuple(window)[1] != 0:
        raise NotImplementedError(f"stand-in emulates causal windows (left, 0) only, got {window}")
    if args["layer_number"] is not None and args["layer_number"] <= 0:
        raise ValueError("layer_number must be > 0")
    return args


def _twin_arguments(args: dict[str, Any], hidden_size: int, num_attention_heads: int) -> dict[str, Any]:
    """The twin's arguments (TE's names) from a checked TE call."""
    return {"hidden_size": hidden_size, "num_attention_heads": num_attention_heads,
            "num_gqa_groups": args["num_gqa_groups"] or num_attention_heads,
            "kv_channels": args["kv_channels"] or hidden_size // num_attention_heads,
            "layernorm_epsilon": args["layernorm_epsilon"], "layer_number": args["layer_number"] or 1,
            **{name: args[name] for name in _TWIN_ARGUMENTS if name in args}}


class _DeviceAndDtype:
    """TE builds its parameters on `device` in `dtype` (default: the default dtype)."""

    def __init__(self, device: Any, dtype: torch.dtype | None) -> None:
        self.device, self.dtype = device, dtype

    def __enter__(self) -> None:
        self.previous = torch.get_default_dtype()
        self.device_context = torch.device(self.device)
        self.device_context.__enter__()
        torch.set_default_dtype(self.dtype or self.previous)

    def __exit__(self, *exc: Any) -> None:
        torch.set_default_dtype(self.previous)
        self.device_context.__exit__(*exc)

# --- TE's module tree ------------------------------------------------------------------------------


class _ExtraState:
    """TE's base modules (LayerNormLinear, Linear, LayerNormMLP, DotProductAttention) carry _extra_state."""

    def get_extra_state(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)  # what TE returns when no FP8 state exists

    def set_extra_state(self, state) -> None:
        pass


class _Backend(nn.Module):
    """FlashAttention / FusedAttention / UnfusedDotProductAttention: each keeps softmax_scale, read at forward."""

    def __init__(self, softmax_scale: float) -> None:
        super().__init__()
        self.softmax_scale = softmax_scale


SOFTMAX_SCALE_HOLDERS = ("flash_attention", "fused_attention", "unfused_attention")


class DotProductAttention(_ExtraState, nn.Module):
    """Computes softmax_scale in __init__ and hands it to its backends; keeps none itself (TE 2.0-2.20)."""

    def __init__(self, softmax_scale: float, holders: tuple[str, ...] = SOFTMAX_SCALE_HOLDERS) -> None:
        super().__init__()
        for name in holders:
            setattr(self, name, _Backend(softmax_scale))
        self._layout_scale = softmax_scale  # only for a layout without holders (a moved-layout test)

    def effective_scale(self) -> float:
        backends = [getattr(self, name) for name in SOFTMAX_SCALE_HOLDERS if hasattr(self, name)]
        scales = {b.softmax_scale for b in backends} or {self._layout_scale}
        assert len(scales) == 1, f"softmax_scale differs between TE's attention backends: {scales}"
        return scales.pop()


def _with_extra_state(module: nn.Module) -> None:
    module.__class__ = type(module.__class__.__name__, (_ExtraState, module.__class__), {})


def _check_rope(freqs: torch.Tensor | None, seq_len: int) -> None:
    if freqs is not None:  # TORCH_CHECKs of TE's fused RoPE
        assert freqs.dim() == 4, "expected 4D freqs tensor"
        assert freqs.size(1) == 1 and freqs.size(2) == 1, "expected the second and third dims of freqs equal 1"
        assert freqs.dtype == torch.float32, "Dtype of the freqs tensor must be float"
        assert freqs.size(0) >= seq_len, "expected freqs tensor has a longer sequence length than input"


class TransformerLayer(torch_layer.TransformerLayer):
    """Checks arguments against one generation's signature; computes with teswap's twin."""

    generation: Generation = GENERATIONS[LATEST]
    softmax_scale_holders: tuple[str, ...] = SOFTMAX_SCALE_HOLDERS

    def __init__(self, hidden_size, ffn_hidden_size, num_attention_heads, **kwargs) -> None:
        args = _checked_args("TransformerLayer", self.generation.layer_init, kwargs)
        twin = _twin_arguments(args, hidden_size, num_attention_heads)
        with _DeviceAndDtype(args["device"], args["params_dtype"]):
            super().__init__(ffn_hidden_size=ffn_hidden_size, fuse_qkv_params=args["fuse_qkv_params"], **twin)
        self.init_kwargs = {"hidden_size": hidden_size, "ffn_hidden_size": ffn_hidden_size,
                            "num_attention_heads": num_attention_heads, **kwargs}
        self.forward_calls: list[dict] = []
        attention = self.self_attention
        # TE: always 1/sqrt(kv_channels); TransformerLayer takes no softmax_scale.
        attention.core_attention = DotProductAttention(twin["kv_channels"] ** -0.5, self.softmax_scale_holders)
        for module in (attention.layernorm_qkv, attention.proj, self.layernorm_mlp):
            _with_extra_state(module)
        self.window = args["window_size"]

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        unknown = sorted(set(kwargs) - set(self.generation.layer_forward))
        if unknown:
            raise TypeError(f"TransformerLayer.forward() got unexpected keyword arguments {unknown}")
        freqs = kwargs.get("rotary_pos_emb")
        seq_len = hidden_states.shape[1]  # bshd
        _check_rope(freqs, seq_len)
        self.forward_calls.append(kwargs)
        self.self_attention.softmax_scale = self.self_attention.core_attention.effective_scale()
        return super().forward(hidden_states, freqs[:seq_len])  # causal: the window counts in positions, as TE's


# --- recipes ---------------------------------------------------------------------------------------


class Format(enum.Enum):
    E2M1 = "E2M1"  # from 2.8 (NVFP4); harmless to have earlier here
    E4M3 = "E4M3"
    E5M2 = "E5M2"
    HYBRID = "HYBRID"


@dataclass(frozen=True)
class MMParams:
    use_split_accumulator: bool = True


def _env_flag(name: str) -> bool:
    return os.getenv(name, "0") == "1"


def _field_defaults() -> dict[str, Any]:
    """TE's defaults for the recipe fields (env-derived ones read now, as TE reads them at import)."""
    return {
        "margin": 0, "interval": -1, "amax_history_len": 1024, "amax_compute_algo": "max",
        "scaling_factor_compute_algo": None, "reduce_amax": True, "fp8_dpa": False, "fp8_mha": False,
        "backward_override": os.getenv("NVTE_BACKWARD_OVERRIDE", None),
        "use_power_2_scales": _env_flag("NVTE_FP8_CURRENT_SCALING_POWER_2_SCALES"),
        "use_f32_scales": _env_flag("NVTE_FP8_BLOCK_SCALING_FP32_SCALES"),
        "fp8_gemm_fprop": MMParams(True), "fp8_gemm_dgrad": MMParams(True), "fp8_gemm_wgrad": MMParams(True),
        "x_block_scaling_dim": 1, "w_block_scaling_dim": 2, "grad_block_scaling_dim": 1,
        "enable_2d_quantization": False,
        "disable_rht": _env_flag("NVTE_NVFP4_DISABLE_RHT"),
        "disable_stochastic_rounding": _env_flag("NVTE_NVFP4_DISABLE_STOCHASTIC_ROUNDING"),
        "disable_2d_quantization": _env_flag("NVTE_NVFP4_DISABLE_2D_QUANTIZATION"),
        "row_scaled_activation": _env_flag("NVTE_NVFP4_ROW_SCALED_ACTIVATION"),
        "nvfp4_4over6": os.getenv("NVTE_NVFP4_4OVER6", "none"),
        "nvfp4_4over6_e4m3_use_256": os.getenv("NVTE_NVFP4_4OVER6_E4M3_USE_256", "all"),
        "nvfp4_4over6_err_mode": os.getenv("NVTE_NVFP4_4OVER6_ERR_MODE", "MAE").upper(),
        "fp4_format": Format.E2M1,
    }


_FORMAT_DEFAULT = {"DelayedScaling": Format.HYBRID, "Float8CurrentScaling": Format.HYBRID,
                   "Float8BlockScaling": Format.E4M3, "MXFP8BlockScaling": Format.E4M3,
                   "NVFP4BlockScaling": Format.E4M3}


def _recipe_classes(generation: Generation) -> dict[str, type]:
    """Dataclasses with each generation's constructor fields; QParams class attributes where TE has them."""
    defaults = _field_defaults()
    classes: dict[str, type] = {}
    qparams = _qparams_class(generation)
    for name, fields in generation.recipes.items():
        spec = [(field, Any, dataclasses.field(default=_FORMAT_DEFAULT[name] if field == "fp8_format"
                                               else defaults[field])) for field in fields]
        namespace: dict[str, Any] = {}
        if name == "Float8CurrentScaling":
            # TE 2.8+: QParams(power_2_scale=<the env default>) fixed when the class is made; False before.
            power_2 = defaults["use_power_2_scales"] if "use_power_2_scales" in fields else False
            namespace = dict.fromkeys(QPARAMS_CLASS_ATTRS, qparams(power_2_scale=power_2, amax_epsilon=0.0))
        if name == "Float8BlockScaling":
            power_2 = not defaults["use_f32_scales"]
            namespace = dict.fromkeys(QPARAMS_CLASS_ATTRS, qparams(power_2_scale=power_2, amax_epsilon=0.0))
        classes[name] = dataclasses.make_dataclass(name, spec, namespace=namespace)
    return classes


def _qparams_class(generation: Generation) -> type:
    fields = [(field, Any, dataclasses.field(default=False if field != "amax_epsilon" else 0.0))
              for field in generation.qparams]
    return dataclasses.make_dataclass("QParams", fields, frozen=True)


def _to_emulation(recipe):
    """Map a stand-in TE recipe onto teswap's emulation, as TE's modules read it, so the twin's GEMMs
    run what TE would run: Float8CurrentScaling's power-of-2 and epsilon come from the fp8_quant_*
    QParams (what LayerNormLinear / Linear / LayerNormMLP set their quantizers from), not from the
    use_power_2_scales field."""
    from teswap.precision import recipes as fp8

    kind, fmt = type(recipe).__name__, fp8.Format[recipe.fp8_format.name]
    if getattr(recipe, "backward_override", None) is not None:
        raise NotImplementedError(f"the stand-in emulates no backward_override={recipe.backward_override!r}")
    if kind == "DelayedScaling":
        return fp8.DelayedScaling(margin=recipe.margin, fp8_format=fmt, amax_history_len=recipe.amax_history_len,
                                  amax_compute_algo=recipe.amax_compute_algo)
    if kind == "Float8CurrentScaling":
        qparams = {getattr(recipe, name) for name in QPARAMS_CLASS_ATTRS}
        assert len(qparams) == 1, f"the stand-in emulates one QParams for inputs, weights and grads: {qparams}"
        (q,) = qparams
        return fp8.Float8CurrentScaling(fp8_format=fmt, use_power_2_scales=q.power_2_scale,
                                        amax_epsilon=q.amax_epsilon)
    if kind == "Float8BlockScaling":  # TE's modules read power-of-2 from the fp8_quant_* QParams
        qparams = {getattr(recipe, name) for name in QPARAMS_CLASS_ATTRS}
        assert len(qparams) == 1, f"the stand-in emulates one QParams for inputs, weights and grads: {qparams}"
        (q,) = qparams
        assert q.amax_epsilon == 0.0, "the stand-in emulates Float8BlockScaling without an amax epsilon"
        return fp8.Float8BlockScaling(fp8_format=fmt, use_f32_scales=not q.power_2_scale,
                                      x_block_scaling_dim=recipe.x_block_scaling_dim,
                                      w_block_scaling_dim=recipe.w_block_scaling_dim,
                                      grad_block_scaling_dim=recipe.grad_block_scaling_dim)
    if kind == "MXFP8BlockScaling":
        if getattr(recipe, "enable_2d_quantization", False):
            raise NotImplementedError("the stand-in emulates no 2D MXFP8 weights")
        return fp8.MXFP8BlockScaling(margin=recipe.margin, fp8_format=fmt)
    if kind == "NVFP4BlockScaling":
        if getattr(recipe, "row_scaled_activation", False) or getattr(recipe, "nvfp4_4over6", "none") != "none":
            raise NotImplementedError("the stand-in emulates no row-scaled or 4over6 NVFP4")
        return fp8.NVFP4BlockScaling(disable_rht=recipe.disable_rht,
                                     disable_stochastic_rounding=recipe.disable_stochastic_rounding,
                                     disable_2d_quantization=recipe.disable_2d_quantization)
    raise NotImplementedError(f"the stand-in emulates no {kind}")


# --- autocast and availability checks --------------------------------------------------------------

AUTOCAST_CALLS: list[dict] = []  # {"entry": "autocast" | "fp8_autocast", "recipe": ..., "kwargs": {...}}


def _entry_point(name: str, params: tuple[str, ...], recipe_keyword: str, deprecated: bool):
    def entry(**kwargs):
        from teswap.precision import emulation as fp8

        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"{name}() got unexpected keyword arguments {unknown}")
        if deprecated:  # TE 2.9+: fp8_autocast warns, then calls autocast
            warnings.warn("fp8_autocast is deprecated and will be removed in a future release.",
                          DeprecationWarning, stacklevel=2)
        AUTOCAST_CALLS.append({"entry": name, "recipe": kwargs.get(recipe_keyword), "kwargs": kwargs})
        return fp8.fp8_autocast(_to_emulation(kwargs[recipe_keyword]), enabled=kwargs.get("enabled", True))

    entry.__name__ = name
    return entry


class _DeprecatedModule(types.ModuleType):
    """transformer_engine.pytorch.fp8 on TE 2.9+: still there, warns DeprecationWarning when used."""

    def __getattr__(self, name: str):
        warnings.warn("Using deprecated internal API from Transformer Engine. transformer_engine.pytorch.fp8 "
                      "will be removed in a future release.", DeprecationWarning, stacklevel=2)
        raise AttributeError(name)


def _checks(generation: Generation, answers: dict[str, tuple[bool, str]]) -> dict[str, Any]:
    """Module-level is_*_available(return_reason=) (2.9+) and FP8GlobalStateManager's (2.0+), answering
    from `answers` (default: available), so a test can stand in for a GPU that says no."""

    def top_level(name: str):
        def check(return_reason: bool = False):
            ok, reason = answers.get(name, (True, ""))
            return (ok, reason) if return_reason else ok

        return check

    def manager_check(name: str):
        return classmethod(lambda cls: answers.get(name, (True, "")))

    manager = type("FP8GlobalStateManager", (), {name: manager_check(name) for name in generation.checks})
    return {"top_level": {name: top_level(name) for name in generation.checks}, "manager": manager}


def install(monkeypatch, version: str = LATEST, *,
            softmax_scale_holders: tuple[str, ...] = SOFTMAX_SCALE_HOLDERS) -> types.ModuleType:
    """Put generation `version`'s stand-in at `transformer_engine` (.pytorch, .common.recipe, .pytorch.fp8)
    in sys.modules for one test. `softmax_scale_holders=()` gives a layout TE has never had (no backend
    holds softmax_scale), to see teswap's "TE's layout moved" guard fire. The returned
    transformer_engine.pytorch has `answers`: set answers["is_mxfp8_available"] = (False, reason) to
    make that check say no."""
    generation = GENERATIONS[version]
    package = types.ModuleType("transformer_engine")
    package.__version__ = generation.version
    pytorch = types.ModuleType("transformer_engine.pytorch")
    common = types.ModuleType("transformer_engine.common")
    recipe = types.ModuleType("transformer_engine.common.recipe")
    recipe.Format, recipe.MMParams = Format, MMParams
    if generation.qparams:
        recipe.QParams = _qparams_class(generation)
    for name, cls in _recipe_classes(generation).items():
        setattr(recipe, name, cls)
    # TE's layer of this generation, with TE's KV cache and padding mask types (issue 11's bridge)
    pytorch.TransformerLayer = type("TransformerLayer", (TransformerLayerWithInference,), {
        "generation": generation, "softmax_scale_holders": softmax_scale_holders})
    pytorch.InferenceParams = InferenceParams
    for name, cls in (("MultiheadAttention", MultiheadAttention), ("LayerNormMLP", LayerNormMLP)):
        setattr(pytorch, name, type(name, (cls,), {"generation": generation}))
    pytorch.RMSNorm = RMSNorm
    for name, cls in (("Linear", Linear), ("GroupedLinear", GroupedLinear)):
        setattr(pytorch, name, type(name, (cls,), {"generation": generation}))
    pytorch.moe_permute = _checked_function("moe_permute", PERMUTE_PARAMS, _moe_permute)
    pytorch.moe_unpermute = _checked_function("moe_unpermute", generation.unpermute, _moe_unpermute)
    INFERENCE_PARAMS_MADE.clear()
    pytorch.answers = answers = {}
    checks = _checks(generation, answers)
    pytorch.fp8_autocast = _entry_point("fp8_autocast", FP8_AUTOCAST_PARAMS, "fp8_recipe", generation.autocast)
    fp8 = _DeprecatedModule("transformer_engine.pytorch.fp8") if generation.top_level_checks else (
        types.ModuleType("transformer_engine.pytorch.fp8"))
    if generation.autocast:
        pytorch.autocast = _entry_point("autocast", AUTOCAST_PARAMS, "recipe", False)
    if generation.top_level_checks:
        for name, check in checks["top_level"].items():
            setattr(pytorch, name, check)
    else:
        fp8.FP8GlobalStateManager = checks["manager"]
    pytorch.fp8 = fp8
    pytorch.__teswap_standin__ = True
    package.pytorch, package.common, common.recipe = pytorch, common, recipe
    AUTOCAST_CALLS.clear()
    for name, module in (("transformer_engine", package), ("transformer_engine.pytorch", pytorch),
                         ("transformer_engine.pytorch.fp8", fp8), ("transformer_engine.common", common),
                         ("transformer_engine.common.recipe", recipe)):
        monkeypatch.setitem(sys.modules, name, module)
    return pytorch


# --- TE's KV cache and padding mask types (transformer_engine/pytorch/attention/inference.py and
# dot_product_attention/, 2.20.0.dev0, commit d0067d0). Emulated on CPU to test OUR bridge to
# generate(); the attention math is still the twin's.

INFERENCE_PARAMS_INIT_PARAMS = (
    "max_batch_size", "max_sequence_length", "num_heads_kv", "head_dim_k", "dtype", "head_dim_v", "is_paged",
    "total_num_pages", "page_size", "max_ctx_len", "qkv_format", "custom_cache_manager",
)
INFERENCE_PARAMS_MADE: list = []


class NonPagedKVCacheManager:
    """TE's non-paged manager: cache[layer_number] = (k, v) as [max_batch, max_seqlen, heads, dim]."""

    def __init__(self, max_batch_size, max_seqlen, num_heads, head_dim_k, dtype, head_dim_v=None):
        self.max_batch_size, self.max_seqlen, self.num_heads = max_batch_size, max_seqlen, num_heads
        self.head_dim_k, self.head_dim_v, self.dtype = head_dim_k, head_dim_v or head_dim_k, dtype
        self.sequences: OrderedDict = OrderedDict()
        self.cache: dict = {}

    def allocate_memory(self, layer_number):
        shape = (self.max_batch_size, self.max_seqlen, self.num_heads)
        self.cache[layer_number] = (torch.zeros(*shape, self.head_dim_k, dtype=self.dtype),
                                    torch.zeros(*shape, self.head_dim_v, dtype=self.dtype))

    def pre_step(self, step_dict):
        """As TE's: sequences it holds advance by ONE token, new ones start at their step length."""
        finished = self.sequences.keys() - step_dict.keys()
        if finished:
            raise NotImplementedError("the stand-in does not emulate TE's re-indexing of finished sequences")
        for seq in self.sequences:
            self.sequences[seq] += 1
        for seq in step_dict.keys() - self.sequences.keys():
            self.sequences[seq] = step_dict[seq]
        return self.sequences

    def step(self, layer_number, new_k, new_v, cu_new_seqlens, cu_cached_seqlens, qkv_format):
        """copy_to_kv_cache for bshd: row b's first new_len tokens land at [total - new_len, total)."""
        assert qkv_format == "bshd", "the stand-in emulates bshd only"
        k_cache, v_cache = self.cache[layer_number]
        for row in range(new_k.shape[0]):
            new_len = int(cu_new_seqlens[row + 1] - cu_new_seqlens[row])
            total = int(cu_cached_seqlens[row + 1] - cu_cached_seqlens[row])
            k_cache[row, total - new_len:total] = new_k[row, :new_len]
            v_cache[row, total - new_len:total] = new_v[row, :new_len]
        return k_cache[: new_k.shape[0]], v_cache[: new_k.shape[0]]


class InferenceParams:
    """TE >= 2.2's InferenceParams (non-paged, bshd), its constructor checked against TE's signature."""

    def __init__(self, max_batch_size, max_sequence_length, **kwargs):
        unknown = sorted(set(kwargs) - set(INFERENCE_PARAMS_INIT_PARAMS))
        if unknown:
            raise TypeError(f"InferenceParams.__init__() got unexpected keyword arguments {unknown}")
        assert all(kwargs.get(x) is not None for x in ("num_heads_kv", "head_dim_k", "dtype")), \
            "num_heads_kv, head_dim_k, and dtype are required for InferenceParams since Transformer Engine 2.2."
        if kwargs.get("is_paged") or kwargs.get("qkv_format", "bshd") != "bshd":
            raise NotImplementedError("the stand-in emulates TE's non-paged bshd cache only")
        self.max_batch_size, self.max_sequence_length = max_batch_size, max_sequence_length
        self.init_kwargs = {"max_batch_size": max_batch_size, "max_sequence_length": max_sequence_length, **kwargs}
        self.cache_manager = NonPagedKVCacheManager(max_batch_size, max_sequence_length, kwargs["num_heads_kv"],
                                                    kwargs["head_dim_k"], kwargs["dtype"], kwargs.get("head_dim_v"))
        self.sequences: OrderedDict = OrderedDict()
        self.cu_seqlens_q = torch.zeros(max_batch_size + 1, dtype=torch.int32)
        self.cu_seqlens_kv = torch.zeros(max_batch_size + 1, dtype=torch.int32)
        self.pre_step_seqlens = torch.zeros(max_batch_size, dtype=torch.int32)
        self.steps: list[dict] = []
        INFERENCE_PARAMS_MADE.append(self)

    def allocate_memory(self, layer_number):
        self.cache_manager.allocate_memory(layer_number)

    def reset(self):
        self.sequences = OrderedDict()
        self.cache_manager.sequences = OrderedDict()

    def pre_step(self, step_dict):
        self.steps.append(dict(step_dict))
        self.sequences = self.cache_manager.pre_step(step_dict)
        before = [held - step_dict[seq] for seq, held in self.sequences.items()]
        self.pre_step_seqlens[: len(before)] = torch.tensor(before, dtype=torch.int32)
        self.cu_seqlens_q = _cumulative(list(step_dict.values()), self.max_batch_size)
        self.cu_seqlens_kv = _cumulative(list(self.sequences.values()), self.max_batch_size)

    def get_seqlens_pre_step(self):
        return self.pre_step_seqlens

    def step(self, layer_number, new_k, new_v, qkv_format):
        k_cache, v_cache = self.cache_manager.step(layer_number, new_k, new_v, self.cu_seqlens_q,
                                                   self.cu_seqlens_kv, qkv_format)
        return k_cache, v_cache, self.cu_seqlens_q, self.cu_seqlens_kv, self.max_sequence_length, qkv_format


def _cumulative(lengths, max_batch):
    cumulative = [0]
    for length in lengths:
        cumulative.append(cumulative[-1] + length)
    cumulative += [cumulative[-1]] * (max_batch - len(lengths))
    return torch.tensor(cumulative, dtype=torch.int32)


class TEAttentionCall:
    """TE's per-call padding mask types and KV cache (inference_params), for a module whose twin body takes
    (hidden_states, freqs, mask, kv_update, own_window=): a TransformerLayer or a MultiheadAttention.

    TE semantics emulated: bshd padding masks are read only as row LENGTHS (get_cu_seqlens counts the
    unmasked tokens; each row's first L tokens are taken as real); under inference_params TE appends
    K/V through InferenceParams.step, offsets RoPE per row by get_seqlens_pre_step(), and turns
    padding_causal into padding_causal_bottom_right; a window_size counts back from each query's own
    position in its row (DotProductAttention: keys [i + s_k - s_q - left, i + s_k - s_q] per sequence).
    """

    layer_number: int
    window: Any

    def te_call(self, body, hidden_states: torch.Tensor, mask_type: str, kwargs: dict) -> torch.Tensor:
        params = kwargs.get("inference_params")
        freqs, batch, seq_len = kwargs["rotary_pos_emb"], hidden_states.shape[0], hidden_states.shape[1]
        left = None if self.window is None else tuple(self.window)[0]
        if mask_type == "causal" and params is None:
            return body(self, hidden_states, freqs[:seq_len], None, None)
        assert mask_type in ("padding", "padding_causal"), f"stand-in emulates no mask type {mask_type!r}"
        if params is None:
            mask = kwargs["attention_mask"]
            assert mask is not None and mask.dtype == torch.bool, "Attention mask must be in boolean type!"
            assert mask.shape == (batch, 1, 1, seq_len), "a self-attention padding mask is [b, 1, 1, s]"
            lengths = (~mask[:, 0, 0, :]).sum(-1)  # TE's get_cu_seqlens
            attend = _te_attend(lengths, lengths, seq_len, seq_len, "causal" in mask_type, bottom_right=False,
                                left=left)
            return body(self, hidden_states, freqs[:seq_len], attend, None, own_window=False)
        if self.layer_number not in params.cache_manager.cache:
            params.allocate_memory(self.layer_number)
        starts = params.get_seqlens_pre_step()[:batch].long()
        per_row = freqs[starts[:, None] + torch.arange(seq_len)]  # [b, s, 1, 1, d]: TE's start_positions
        lengths_q = (params.cu_seqlens_q[1:] - params.cu_seqlens_q[:-1])[:batch]
        lengths_kv = (params.cu_seqlens_kv[1:] - params.cu_seqlens_kv[:-1])[:batch]
        attend = _te_attend(lengths_q, lengths_kv, seq_len, params.max_sequence_length, True, bottom_right=True,
                            left=left)

        def kv_update(keys, values):
            k_cache, v_cache, *_ = params.step(self.layer_number, keys.transpose(1, 2).contiguous(),
                                               values.transpose(1, 2).contiguous(), "bshd")
            return k_cache.transpose(1, 2), v_cache.transpose(1, 2)

        return body(self, hidden_states, per_row[:, :, 0].transpose(0, 1), attend, kv_update, own_window=False)


class TransformerLayerWithInference(TEAttentionCall, TransformerLayer):
    """TE's TransformerLayer with its padding mask types and KV cache (TEAttentionCall)."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        mask_type = kwargs.get("self_attn_mask_type") or "causal"
        params = kwargs.get("inference_params")
        if mask_type == "causal" and params is None:
            return super().forward(hidden_states, **kwargs)
        unknown = sorted(set(kwargs) - set(TRANSFORMER_LAYER_FORWARD_PARAMS))
        if unknown:
            raise TypeError(f"TransformerLayer.forward() got unexpected keyword arguments {unknown}")
        self.forward_calls.append(kwargs)
        self.self_attention.softmax_scale = self.self_attention.core_attention.effective_scale()
        return self.te_call(torch_layer.TransformerLayer.forward, hidden_states, mask_type, kwargs)


def _te_attend(lengths_q, lengths_kv, s_q, s_kv, causal, *, bottom_right, left=None):
    """[b, 1, s_q, s_kv] True = attend: row b's first lengths_q queries over its first lengths_kv keys,
    within `left` keys back of each query's position when a window is set."""
    q = torch.arange(s_q)[None, :, None]
    k = torch.arange(s_kv)[None, None, :]
    attend = k < lengths_kv[:, None, None]
    offset = (lengths_kv - lengths_q)[:, None, None] if bottom_right else 0
    if causal:
        attend = attend & (k <= q + offset)
    if left is not None:
        attend = attend & (k >= q + offset - left)
    padded_query = q >= lengths_q[:, None, None]
    attend = attend | (padded_query & (k == 0))  # TE zero-fills padded query rows; any finite value will do
    return attend[:, None]


# --- the modules of a composite layer (Gemma3's): MultiheadAttention, RMSNorm, LayerNormMLP --------------


class MultiheadAttention(TEAttentionCall, torch_attention.MultiheadAttention):
    """TE's MultiheadAttention of one generation (signature checked), computing with the twin's."""

    generation: Generation = GENERATIONS[LATEST]

    def __init__(self, hidden_size, num_attention_heads, **kwargs) -> None:
        args = _checked_args("MultiheadAttention", self.generation.mha_init, kwargs)
        assert args["input_layernorm"], "the stand-in emulates input_layernorm=True (a fused LayerNormLinear QKV)"
        twin = _twin_arguments(args, hidden_size, num_attention_heads)
        with _DeviceAndDtype(args["device"], args["params_dtype"]):
            super().__init__(
                hidden_size=hidden_size, num_attention_heads=num_attention_heads, num_gqa_groups=twin["num_gqa_groups"],
                kv_channels=twin["kv_channels"], eps=args["layernorm_epsilon"], fuse_qkv_params=args["fuse_qkv_params"],
                qkv_weight_interleaved=args["qkv_weight_interleaved"], attention_dropout=args["attention_dropout"],
                softmax_scale=None, zero_centered_gamma=args["zero_centered_gamma"], bias=args["bias"],
                window_size=args["window_size"], qk_norm_type=args["qk_norm_type"], qk_norm_eps=args["qk_norm_eps"],
                qk_norm_before_rope=args["qk_norm_before_rope"], init_method=args.get("init_method"),
                output_layer_init_method=args.get("output_layer_init_method"))
        self.layer_number, self.window = twin["layer_number"], args["window_size"]
        self.init_kwargs = {"hidden_size": hidden_size, "num_attention_heads": num_attention_heads, **kwargs}
        self.forward_calls: list[dict] = []
        self.core_attention = DotProductAttention(twin["kv_channels"] ** -0.5)
        for module in (self.layernorm_qkv, self.proj):
            _with_extra_state(module)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        unknown = sorted(set(kwargs) - set(self.generation.mha_forward))
        if unknown:
            raise TypeError(f"MultiheadAttention.forward() got unexpected keyword arguments {unknown}")
        _check_rope(kwargs.get("rotary_pos_emb"), hidden_states.shape[1])
        self.forward_calls.append(kwargs)
        self.softmax_scale = self.core_attention.effective_scale()
        return self.te_call(torch_attention.MultiheadAttention.forward, hidden_states,
                            kwargs.get("attn_mask_type") or "causal", kwargs)


class RMSNorm(torch_modules.RMSNorm):
    """TE's op-based RMSNorm module (dtype and device as the op takes them)."""

    def __init__(self, normalized_shape=None, **kwargs) -> None:
        unknown = sorted(set(kwargs) - set(RMSNORM_INIT_PARAMS))
        if unknown:
            raise TypeError(f"RMSNorm.__init__() got unexpected keyword arguments {unknown}")
        if kwargs.get("params_dtype") is not None:
            warnings.warn("params_dtype is deprecated: pass dtype", DeprecationWarning, stacklevel=2)
        with _DeviceAndDtype(kwargs.get("device", "cuda"), kwargs.get("dtype")):
            super().__init__(normalized_shape, eps=kwargs.get("eps", 1e-5),
                             zero_centered_gamma=kwargs.get("zero_centered_gamma", False))
        self.init_kwargs = {"normalized_shape": normalized_shape, **kwargs}


class LayerNormMLP(_ExtraState, torch_modules.LayerNormMLP):
    """TE's LayerNormMLP of one generation (signature checked), computing with the twin's."""

    generation: Generation = GENERATIONS[LATEST]

    def __init__(self, hidden_size, ffn_hidden_size, **kwargs) -> None:
        args = _checked_args("LayerNormMLP", self.generation.mlp_init, kwargs)
        with _DeviceAndDtype(args["device"], args["params_dtype"]):
            super().__init__(hidden_size, ffn_hidden_size, eps=args["eps"],
                             zero_centered_gamma=args["zero_centered_gamma"], activation=args["activation"],
                             bias=args["bias"], init_method=args.get("init_method"),
                             output_layer_init_method=args.get("output_layer_init_method"))
        self.init_kwargs = {"hidden_size": hidden_size, "ffn_hidden_size": ffn_hidden_size, **kwargs}


# --- the MoE composite's modules (te_mixtral's layer), signatures as recorded above --------------------

_LINEAR_DEFAULTS = {"bias": True, "return_bias": False, "params_dtype": None, "device": "cuda", "init_method": None,
                    "parallel_mode": None, "sequence_parallel": False, "tp_size": 1}


def _linear_args(kind: str, allowed: tuple[str, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{kind}.__init__() got unexpected keyword arguments {unknown}")
    args = {**_LINEAR_DEFAULTS, **kwargs}
    if args["bias"] or args["return_bias"] or args["parallel_mode"] is not None or args["tp_size"] != 1:
        raise NotImplementedError(f"stand-in {kind} emulates bias=False, no return_bias, no tensor parallelism")
    return args


class Linear(_ExtraState, torch_modules.Linear):
    """TE's Linear of one generation (signature checked): weight [out, in], the twin's GEMM."""

    generation: Generation = GENERATIONS[LATEST]

    def __init__(self, in_features, out_features, **kwargs) -> None:
        args = _linear_args("Linear", self.generation.linear_init, kwargs)
        with _DeviceAndDtype(args["device"], args["params_dtype"]):
            super().__init__(in_features, out_features, gemm_name="linear", init_method=args["init_method"])
        self.init_kwargs = {"in_features": in_features, "out_features": out_features, **kwargs}

    def forward(self, inp, **kwargs):  # type: ignore[override]
        unknown = sorted(set(kwargs) - set(LINEAR_FORWARD_PARAMS[1:]))
        if unknown:
            raise TypeError(f"Linear.forward() got unexpected keyword arguments {unknown}")
        return torch_modules.Linear.forward(self, inp)


class GroupedLinear(_ExtraState, torch_moe.GroupedLinear):
    """TE's GroupedLinear of one generation (signature checked): weight0..weight{n-1}, the twin's per-group GEMMs."""

    generation: Generation = GENERATIONS[LATEST]

    def __init__(self, num_gemms, in_features, out_features, **kwargs) -> None:
        args = _linear_args("GroupedLinear", self.generation.grouped_init, kwargs)
        if args.get("single_grouped_weight") or args.get("use_grouped_tensor"):
            raise NotImplementedError("stand-in GroupedLinear emulates one parameter per GEMM (weight{i})")
        with _DeviceAndDtype(args["device"], args["params_dtype"]):
            super().__init__(num_gemms, in_features, out_features, name="grouped", init_method=args["init_method"])
        self.init_kwargs = {"num_gemms": num_gemms, "in_features": in_features, "out_features": out_features,
                            **kwargs}
        self.forward_calls: list[list[int]] = []

    def forward(self, inp, m_splits, **kwargs):  # type: ignore[override]
        unknown = sorted(set(kwargs) - set(self.generation.grouped_forward[2:]))
        if unknown:
            raise TypeError(f"GroupedLinear.forward() got unexpected keyword arguments {unknown}")
        if not isinstance(m_splits, list) or sum(m_splits) != inp.shape[0] or len(m_splits) != self.num_gemms:
            raise ValueError(f"m_splits must be a list of {self.num_gemms} ints summing to {inp.shape[0]}")
        self.forward_calls.append(list(m_splits))
        return torch_moe.GroupedLinear.forward(self, inp, m_splits)


MOE_CALLS: list[tuple[str, dict[str, Any]]] = []


def _checked_function(name: str, params: tuple[str, ...], body):
    def call(*args, **kwargs):
        named = dict(zip(params, args, strict=False))
        unknown = sorted(set(kwargs) - set(params))
        if unknown or set(named) & set(kwargs):
            raise TypeError(f"{name}() got unexpected or repeated keyword arguments {unknown or sorted(named)}")
        named.update(kwargs)
        MOE_CALLS.append((name, {k: v for k, v in named.items() if not isinstance(v, torch.Tensor)}))
        return body(**named)

    call.__name__ = name
    return call


def _moe_permute(inp, routing_map, num_out_tokens=-1, max_token_num=-1, map_type="mask"):
    if map_type != "index" or routing_map.dtype != torch.int32:
        raise NotImplementedError("stand-in moe_permute emulates map_type='index' with int32 indices")
    if num_out_tokens != routing_map.numel():  # main: required and >= 0; 2.1: -1 default
        raise NotImplementedError("stand-in moe_permute emulates num_out_tokens = tokens x top-k (no dropping)")
    return torch_moe.moe_permute(inp, routing_map.long())


def _moe_unpermute(inp, row_id_map, merging_probs=None, restore_shape=None, map_type="mask", probs=None,
                   pad_offsets=None):
    if map_type != "index" or merging_probs is None or probs is not None or pad_offsets is not None:
        raise NotImplementedError("stand-in moe_unpermute emulates map_type='index' with merging_probs")
    if merging_probs.dtype != torch.float32:
        raise TypeError("TE warns and casts merging_probs that are not float32; teswap passes float32")
    return torch_moe.moe_unpermute(inp, row_id_map, merging_probs)

"""HF <-> TE state-dict mapping for Llama decoder layers; every key accounted for, both ways.

    HF  model.layers.N.                      TE  model.layers.N.
    input_layernorm.weight                   self_attention.layernorm_qkv.layer_norm_weight
    self_attn.{q,k,v}_proj.weight            self_attention.layernorm_qkv.{query,key,value}_weight
                                             (fused: self_attention.layernorm_qkv.weight, see below)
    self_attn.o_proj.weight                  self_attention.proj.weight
    post_attention_layernorm.weight          layernorm_mlp.layer_norm_weight
    mlp.gate_proj.weight ; mlp.up_proj.weight  layernorm_mlp.fc1_weight rows [0, I) ; [I, 2I)
    mlp.down_proj.weight                     layernorm_mlp.fc2_weight

Fused QKV row order (TE MultiheadAttention, qkv_weight_interleaved=True, the default): the GEMM
output is viewed as [..., groups, heads/groups + 2, head_dim] and split into q, k, v along the
second-to-last axis, so rows run group by group: that group's query heads, its key head, its value
head. Keys outside the decoder layers (embeddings, final norm, lm_head) pass through unchanged.
TE state dicts also carry `*._extra_state` (FP8 metadata): dropped going to HF, never required.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import PretrainedConfig

from teswap.errors import MappingError
from teswap.layers.hf_adapter import head_dim_of

StateDict = Mapping[str, torch.Tensor]

_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.(?P<idx>\d+)\.)(?P<rest>.+)$")

# HF name -> TE name, for tensors that map one to one.
_ONE_TO_ONE = {
    "input_layernorm.weight": "self_attention.layernorm_qkv.layer_norm_weight",
    "self_attn.o_proj.weight": "self_attention.proj.weight",
    "post_attention_layernorm.weight": "layernorm_mlp.layer_norm_weight",
    "mlp.down_proj.weight": "layernorm_mlp.fc2_weight",
}
_SPLIT_QKV = {
    "self_attn.q_proj.weight": "self_attention.layernorm_qkv.query_weight",
    "self_attn.k_proj.weight": "self_attention.layernorm_qkv.key_weight",
    "self_attn.v_proj.weight": "self_attention.layernorm_qkv.value_weight",
}
_FUSED_QKV = "self_attention.layernorm_qkv.weight"
_FC1 = "layernorm_mlp.fc1_weight"
_GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")

HF_LAYER_KEYS = frozenset([*_ONE_TO_ONE, *_SPLIT_QKV, *_GATE_UP])


def te_layer_keys(*, fuse_qkv: bool) -> frozenset[str]:
    """The parameter names (relative to a layer) of a TE-layout layer."""
    qkv = {_FUSED_QKV} if fuse_qkv else set(_SPLIT_QKV.values())
    return frozenset([*_ONE_TO_ONE.values(), *qkv, _FC1])


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, groups: int, head_dim: int) -> torch.Tensor:
    """[q; k; v] row blocks -> TE's group-interleaved fused QKV weight."""
    hidden = q.shape[1]
    qg = q.reshape(groups, -1, head_dim, hidden)  # query heads of each group, in order
    kg = k.reshape(groups, 1, head_dim, hidden)
    vg = v.reshape(groups, 1, head_dim, hidden)
    return torch.cat((qg, kg, vg), dim=1).reshape(-1, hidden)


def unfuse_qkv(fused: torch.Tensor, *, heads: int, groups: int, head_dim: int):
    """TE's group-interleaved fused QKV weight -> (q, k, v) row blocks."""
    hidden = fused.shape[1]
    grouped = fused.reshape(groups, heads // groups + 2, head_dim, hidden)
    q, k, v = grouped.split([heads // groups, 1, 1], dim=1)
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def _split_layers(state_dict: StateDict) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Group keys by layer prefix ("model.layers.3."), and collect the rest."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _LAYER_KEY.match(key)
        if match:
            layers.setdefault(match["prefix"], {})[match["rest"]] = tensor
        else:
            rest[key] = tensor
    return layers, rest


def _require_exact(layer: Mapping[str, torch.Tensor], expected: frozenset[str], prefix: str, side: str) -> None:
    missing = sorted(expected - layer.keys())
    unexpected = sorted(k for k in layer.keys() - expected if not k.endswith("_extra_state"))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(prefix + k for k in missing))
        if unexpected:
            parts.append("unmapped " + ", ".join(prefix + k for k in unexpected))
        raise MappingError(f"{side} state dict does not match the Llama layer mapping: " + "; ".join(parts))


def hf_to_te_state_dict(state_dict: StateDict, config: PretrainedConfig, *, fuse_qkv_params: bool = False
                        ) -> dict[str, torch.Tensor]:
    """Map an HF Llama state dict to TE layout; raise MappingError on any missing or unmapped key."""
    layers, out = _split_layers(state_dict)
    _check_layer_count(layers, config, "HF")
    groups = config.num_key_value_heads or config.num_attention_heads
    for prefix, layer in layers.items():
        _require_exact(layer, HF_LAYER_KEYS, prefix, "HF")
        for hf, te in _ONE_TO_ONE.items():
            out[prefix + te] = layer[hf]
        q, k, v = (layer[hf] for hf in _SPLIT_QKV)
        if fuse_qkv_params:
            out[prefix + _FUSED_QKV] = fuse_qkv(q, k, v, groups=groups, head_dim=head_dim_of(config))
        else:
            for tensor, te in zip((q, k, v), _SPLIT_QKV.values(), strict=True):
                out[prefix + te] = tensor
        out[prefix + _FC1] = torch.cat([layer[hf] for hf in _GATE_UP], dim=0)  # SiLU acts on rows [0, I)
    return out


def te_to_hf_state_dict(state_dict: StateDict, config: PretrainedConfig) -> dict[str, torch.Tensor]:
    """Map a TE-layout state dict (split or fused QKV, detected) back to HF names; drop _extra_state."""
    layers, out = _split_layers(state_dict)
    out = {k: v for k, v in out.items() if not k.endswith("_extra_state")}
    _check_layer_count(layers, config, "TE")
    groups = config.num_key_value_heads or config.num_attention_heads
    for prefix, layer in layers.items():
        fused = _FUSED_QKV in layer
        _require_exact(layer, te_layer_keys(fuse_qkv=fused), prefix, "TE")
        for hf, te in _ONE_TO_ONE.items():
            out[prefix + hf] = layer[te]
        if fused:
            qkv = unfuse_qkv(layer[_FUSED_QKV], heads=config.num_attention_heads, groups=groups,
                             head_dim=head_dim_of(config))
        else:
            qkv = tuple(layer[te] for te in _SPLIT_QKV.values())
        for hf, tensor in zip(_SPLIT_QKV, qkv, strict=True):
            out[prefix + hf] = tensor
        gate, up = layer[_FC1].chunk(2, dim=0)
        out[prefix + _GATE_UP[0]], out[prefix + _GATE_UP[1]] = gate, up
    return out


def _check_layer_count(layers: Mapping[str, object], config: PretrainedConfig, side: str) -> None:
    indices = sorted(int(_LAYER_KEY.match(p + "x")["idx"]) for p in layers)  # type: ignore[index]
    if indices != list(range(config.num_hidden_layers)):
        raise MappingError(
            f"{side} state dict has decoder layers {indices}, expected 0..{config.num_hidden_layers - 1}"
        )

"""HF <-> TE state-dict mapping for any family's decoder layers; every key accounted for, both ways.

The family's adapter lists its rules for one layer (teswap.families: `Family.layer_rules`, in the
vocabulary of teswap.families.rules); this module applies them to every `...layers.N.` prefix. Keys
outside the decoder layers (embeddings, final norm, lm_head, a classification head) pass through
unchanged. A layer with a key no rule accounts for, or missing one a rule needs, raises MappingError.
TE state dicts also carry `*._extra_state` (FP8 metadata): dropped going to HF, never required; a
TE-only parameter held at zero (`te_only_zero`) may be absent from a TE dict (a gradient dict has
none: it is frozen) and must be zero where present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import PretrainedConfig

from teswap.errors import MappingError
from teswap.families import family_for_config
from teswap.families.rules import Rule, hf_keys, te_keys

StateDict = Mapping[str, torch.Tensor]

_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.(?P<idx>\d+)\.)(?P<rest>.+)$")
FUSED_QKV = "self_attention.layernorm_qkv.weight"


def layer_rules(config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
    """The family's rules for one decoder layer of `config`."""
    return family_for_config(config).layer_rules(config, fuse_qkv=fuse_qkv)


def hf_layer_keys(config: PretrainedConfig) -> frozenset[str]:
    """The HF parameter names (relative to a layer) a decoder layer of `config` holds."""
    return hf_keys(layer_rules(config, fuse_qkv=False))


def te_layer_keys(config: PretrainedConfig, *, fuse_qkv: bool) -> frozenset[str]:
    """The parameter names (relative to a layer) of a TE-layout layer of `config`."""
    return te_keys(layer_rules(config, fuse_qkv=fuse_qkv))


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


def _require_exact(layer: Mapping[str, torch.Tensor], expected: frozenset[str], optional: frozenset[str],
                   prefix: str, side: str, family: str) -> None:
    missing = sorted(expected - optional - layer.keys())
    unexpected = sorted(k for k in layer.keys() - expected if not k.endswith("_extra_state"))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(prefix + k for k in missing))
        if unexpected:
            parts.append("unmapped " + ", ".join(prefix + k for k in unexpected))
        raise MappingError(f"{side} state dict does not match the {family} layer mapping: " + "; ".join(parts))


def hf_to_te_state_dict(state_dict: StateDict, config: PretrainedConfig, *, fuse_qkv_params: bool = False
                        ) -> dict[str, torch.Tensor]:
    """Map an HF state dict to TE layout; raise MappingError on any missing or unmapped key.

    TE-only zero tensors (`te_only_zero`) are not made here: the swapped layers hold them themselves.
    """
    family = family_for_config(config)
    layers, out = _split_layers(state_dict)
    _check_layer_count(layers, config, "HF")
    for prefix, layer in layers.items():
        rules = family.layer_rules_at(config, _index(prefix), fuse_qkv=fuse_qkv_params)
        _require_exact(layer, hf_keys(rules), frozenset(), prefix, "HF", family.name)
        for rule in rules:
            if rule.hf:
                for name, tensor in zip(rule.te, rule.to_te([layer[k] for k in rule.hf]), strict=True):
                    out[prefix + name] = tensor
    return out


def te_to_hf_state_dict(state_dict: StateDict, config: PretrainedConfig, *, gradients: bool = False
                        ) -> dict[str, torch.Tensor]:
    """Map a TE-layout state dict (split or fused QKV, detected) back to HF names; drop _extra_state.

    `gradients=True` maps a dict of gradients: a tensor TE holds as 1 + w has w's gradient as it is.
    """
    family = family_for_config(config)
    layers, out = _split_layers(state_dict)
    out = {k: v for k, v in out.items() if not k.endswith("_extra_state")}
    _check_layer_count(layers, config, "TE")
    for prefix, layer in layers.items():
        rules = family.layer_rules_at(config, _index(prefix), fuse_qkv=FUSED_QKV in layer)
        zero_only = frozenset(name for rule in rules if not rule.hf for name in rule.te)
        _require_exact(layer, te_keys(rules), zero_only, prefix, "TE", family.name)
        for name in zero_only & layer.keys():
            if bool(layer[name].any()):
                raise MappingError(f"{prefix}{name} is not zero: the {family.name} HF layer has no such tensor")
        for rule in rules:
            if rule.hf:
                tensors = [layer[k] for k in rule.te]
                mapped = rule.grads_to_hf(tensors) if gradients else rule.to_hf(tensors)
                for name, tensor in zip(rule.hf, mapped, strict=True):
                    out[prefix + name] = tensor
    return out


def _index(prefix: str) -> int:
    return int(_LAYER_KEY.match(prefix + "x")["idx"])  # type: ignore[index]


def _check_layer_count(layers: Mapping[str, object], config: PretrainedConfig, side: str) -> None:
    indices = sorted(int(_LAYER_KEY.match(p + "x")["idx"]) for p in layers)  # type: ignore[index]
    if indices != list(range(config.num_hidden_layers)):
        raise MappingError(
            f"{side} state dict has decoder layers {indices}, expected 0..{config.num_hidden_layers - 1}"
        )

"""`from_pretrained` under the swap: HF checkpoints land in the TE layout, or loading fails saying why.

`Qwen2ForCausalLM.from_pretrained(DIR)` inside `replace_decoder` builds TE-layout layers whose
parameter names are not the checkpoint's. transformers 5.x renames and converts checkpoint keys while
it loads (its checkpoint conversion mappings, the machinery it uses for MoE and fused checkpoints);
for as long as a swap is active, `conversions_registered` registers one for the family's model type
built from the family's rules (teswap.families): renamings, and for every other rule (gate and up
concatenated into fc1, q/k/v fused in TE's group-interleaved order, Phi-3's qkv_proj split, Gemma3's
q/k norms as 1 + w) an operation that applies the rule as the loaded model's config says. A mapping
transformers already has for the model type (legacy key names) runs first. Saving inside the block
applies the same rules in reverse, so `save_pretrained` writes a stock checkpoint.

A partial load must never pass for a model (TE's example skips missing keys silently). So:
- a checkpoint key of a decoder layer that the mapping has no place for (read from the safetensors
  headers of a local checkpoint) fails the load;
- the load marks every swapped layer as coming from a checkpoint, and when from_pretrained finishes
  (its closing `model.eval()`), a layer with a weight the checkpoint did not hold raises MappingError
  naming it (teswap.layers.hf_adapter.check_loaded); TE-only biases held at zero are set to zero there;
- the layers are pointed at the model's own rotary module (`bind_rope`), so RoPE follows the model's
  device and any in-place rope update.

Works with transformers 5.17 and 5.24 (both have ConversionOps, WeightConverter, WeightRenaming and
register_checkpoint_conversion_mapping); where they are missing, loading under the swap is refused
by the same check rather than returning random layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from teswap.errors import MappingError
from teswap.families.base import Family
from teswap.families.rules import Rule
from teswap.layers.hf_adapter import FROM_CHECKPOINT
from teswap.layers.rope import base_model_of, bind_rope
from teswap.swap import mapping
from teswap.swap.metadata import finish_swapped_model

# Keys of stock layers that old checkpoints carry and transformers itself ignores.
_IGNORED_LAYER_KEYS = r"rotary_emb\.inv_freq"


def _transformers_ops() -> Any:
    """transformers' conversion machinery, or None where this version has none."""
    try:
        from transformers import conversion_mapping, core_model_loading
    except ImportError:
        return None
    needed = ("ConversionOps", "WeightConverter", "WeightRenaming", "Concatenate", "Chunk")
    if not all(hasattr(core_model_loading, name) for name in needed) or not hasattr(
            conversion_mapping, "register_checkpoint_conversion_mapping"):
        return None
    return core_model_loading


def _mark_layers(model: Any) -> None:
    """Mark every swapped layer as loaded from a checkpoint (checked when loading ends), bind RoPE, and
    refuse checkpoint keys of decoder layers that the TE layout has no place for."""
    if model is None or getattr(model, "_teswap_marked", False):
        return
    model._teswap_marked = True
    layers: Any = base_model_of(model).get_submodule("layers")
    for layer in layers:
        setattr(layer, FROM_CHECKPOINT, True)
    bind_rope(model)
    finish_swapped_model(model, type(layers[0]))  # the same HF metadata a built pair gets
    directory = getattr(model.config, "_name_or_path", "")
    unmapped = unmapped_layer_keys(checkpoint_keys(directory), model.config)
    refuse_nonzero_te_only(directory, model.config)
    if unmapped:
        raise MappingError(f"checkpoint keys with no place in the TE layout of the swapped layers: "
                           f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''} "
                           f"(mapped per layer: {', '.join(sorted(mapping.hf_layer_keys(model.config)))})")


def checkpoint_keys(directory: str | Path) -> list[str]:
    """The tensor names of a local safetensors checkpoint (headers only); [] for anything else."""
    path = Path(directory) if directory else None
    if path is None or not path.is_dir():
        return []
    from safetensors import safe_open

    keys: list[str] = []
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            keys.extend(handle.keys())
    return keys


def refuse_nonzero_te_only(directory: str | Path, config: Any) -> None:
    """A TE-layout checkpoint may hold the TE-only biases the layers keep at zero: they must be zero there."""
    path = Path(directory) if directory else None
    zero_only = {name for rule in mapping.layer_rules(config, fuse_qkv=False) if not rule.hf for name in rule.te}
    if path is None or not path.is_dir() or not zero_only:
        return
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (a safetensors handle, not a dict)
                match = mapping._LAYER_KEY.match(key)
                if match and match["rest"] in zero_only and bool(handle.get_tensor(key).any()):
                    raise MappingError(f"{file.name} holds a non-zero {key}: the HF {config.model_type} layer "
                                       "has no such bias, so the TE layout keeps it at zero")


def unmapped_layer_keys(keys: list[str], config: Any) -> list[str]:
    """Decoder-layer keys that are neither HF keys the mapping converts, TE-layout keys (a swapped model
    saved outside the swap) that load as they are, nor keys transformers itself ignores."""
    known = (mapping.hf_layer_keys(config) | mapping.te_layer_keys(config, fuse_qkv=False)
             | mapping.te_layer_keys(config, fuse_qkv=True))
    out = []
    for key in keys:
        if _converted_by_hf(key, config):
            continue  # an older layout transformers itself converts first (Mixtral's block_sparse_moe.experts.N.w1)
        key = _renamed_by_hf(key, config)
        match = mapping._LAYER_KEY.match(key)
        rest = match["rest"] if match else ""
        ignored = rest.endswith("_extra_state") or re.search(_IGNORED_LAYER_KEYS, key)
        if match and rest not in known and not ignored:
            out.append(key)
    return out


# transformers' own conversions of a model type (legacy checkpoint layouts), saved while ours are registered
_HF_OWN: dict[str, list[Any]] = {}


def _renamed_by_hf(key: str, config: Any) -> str:
    for transform in _HF_OWN.get(getattr(config, "model_type", ""), []):
        if type(transform).__name__ == "WeightRenaming":
            for source, target in zip(transform.source_patterns, transform.target_patterns, strict=False):
                key = re.sub(source, target, key)
    return key


def _converted_by_hf(key: str, config: Any) -> bool:
    """Whether one of transformers' own converters of this model type takes `key` (after its renamings)."""
    renamed = _renamed_by_hf(key, config)
    for transform in _HF_OWN.get(getattr(config, "model_type", ""), []):
        if type(transform).__name__ == "WeightConverter":
            patterns = [pattern.replace("*", r"\d+") for pattern in transform.source_patterns]
            if any(re.search(pattern, renamed) for pattern in patterns):
                return True
    return False


def _op_classes(ops: Any) -> dict[str, type]:
    """Our ConversionOps, defined on this transformers version's base class."""

    class MarkLoaded(ops.ConversionOps):
        """Identity on the tensors; marks the model's swapped layers as loaded from a checkpoint."""

        def convert(self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str],
                    **kwargs: Any) -> dict[str, Any]:
            _mark_layers(kwargs.get("model"))
            return {target_patterns[0]: _single(next(iter(input_dict.values())))}

        @property
        def reverse_op(self) -> Any:
            return self

    class ApplyRule(ops.ConversionOps):
        """One family rule (HF tensors -> TE tensors, or back when saving), made for the loaded config."""

        supports_many_to_many = True  # the last op of a chain from HF's per-expert w1/w3 to weight{e}

        def __init__(self, family: Family, fuse_qkv: bool, names: tuple[tuple[str, ...], tuple[str, ...]],
                     back: bool = False) -> None:
            self.family, self.fuse_qkv, self.names, self.back = family, fuse_qkv, names, back

        @torch.no_grad()
        def convert(self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str],
                    **kwargs: Any) -> dict[str, Any]:
            rule = _rule_named(self.family.layer_rules(kwargs["config"], fuse_qkv=self.fuse_qkv), self.names)
            if not self.back:
                _mark_layers(kwargs.get("model"))
            if rule.kind == "split_experts":  # one [E, ...] tensor <-> E tensors: names follow E (`*`)
                return self._experts(rule, input_dict, source_patterns, target_patterns)
            tensors = [_single(input_dict[pattern]) for pattern in source_patterns]
            converted = rule.to_hf(tensors) if self.back else rule.to_te(tensors)
            return {target: tensor.contiguous() for target, tensor in zip(target_patterns, converted, strict=True)}

        def _experts(self, rule: Rule, input_dict: dict[str, Any], source_patterns: list[str],
                     target_patterns: list[str]) -> dict[str, Any]:
            if self.back:  # weight0..weight{E-1}, in expert order (the names are the sources)
                tensors = [_single(input_dict[name]) for name in source_patterns if name in input_dict]
                if len(tensors) != len(rule.te):
                    raise MappingError(f"{len(tensors)} expert tensors for {rule.hf[0]}, expected {len(rule.te)}")
                return {target_patterns[0]: rule.to_hf(list(tensors))[0].contiguous()}
            (values,) = input_dict.values()  # the one source (a chain's earlier op may have renamed it)
            parts = rule.to_te([_single(values)])
            return {target: part.contiguous() for target, part in zip(target_patterns, parts, strict=False)}

        @property
        def reverse_op(self) -> Any:
            return ApplyRule(self.family, self.fuse_qkv, self.names, back=not self.back)

    class AfterHF(ops.ConversionOps):
        """transformers' own conversion of an older layout (to `hf_target`), then our rule on its result;
        saving runs the two backwards: our rule's inverse, then transformers' reversed operations."""

        supports_many_to_many = True

        def __init__(self, hf_ops: list[Any], hf_sources: list[str], hf_target: str, ours: Any,
                     back: bool = False) -> None:
            self.hf_ops, self.hf_sources, self.hf_target = hf_ops, hf_sources, hf_target
            self.ours, self.back = ours, back

        def convert(self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str],
                    **kwargs: Any) -> dict[str, Any]:
            if self.back:
                tensors = self.ours.convert(input_dict, source_patterns, [self.hf_target], **kwargs)
                for op in self.hf_ops:  # already reversed, in reverse order
                    tensors = op.convert(tensors, source_patterns=[self.hf_target], target_patterns=self.hf_sources,
                                         **kwargs)
                return tensors
            tensors = input_dict
            for op in self.hf_ops:
                tensors = op.convert(tensors, source_patterns=source_patterns, target_patterns=[self.hf_target],
                                     **kwargs)
            return self.ours.convert(tensors, [self.hf_target], target_patterns, **kwargs)

        @property
        def reverse_op(self) -> Any:
            return AfterHF([op.reverse_op for op in reversed(self.hf_ops)], self.hf_sources, self.hf_target,
                           self.ours.reverse_op, back=not self.back)

    return {"MarkLoaded": MarkLoaded, "ApplyRule": ApplyRule, "AfterHF": AfterHF}


def _rule_named(rules: list[Rule], names: tuple[tuple[str, ...], tuple[str, ...]]) -> Rule:
    for rule in rules:
        if (rule.hf, rule.te) == names or (rule.kind == "split_experts" and rule.hf == names[0]
                                          and _expert_pattern(rule) == names[1]):
            return rule
    raise MappingError(f"this config's {names[0]} -> {names[1]} mapping is not the one registered for the swap")


# transformers resolves a converter's target names before it converts, so a split into one tensor per expert
# names every expert a model may have; a model with E experts gets the first E
MAX_EXPERTS = 512


def _expert_pattern(rule: Rule) -> tuple[str, ...]:
    """A split_experts rule's TE names for any expert count (weight0 .. weight511): the count is the config's."""
    base = re.sub(r"\d+$", "", rule.te[0])
    return tuple(f"{base}{index}" for index in range(MAX_EXPERTS))


def _single(tensors: Any) -> torch.Tensor:
    return tensors[0] if isinstance(tensors, list) else tensors


def _escaped(name: str) -> str:
    return name.replace(".", r"\.")


def family_rule_names(family: Family, *, fuse_qkv: bool, experts: str | None = None) -> list[Rule]:
    """Every rule the family may have for any of its configs (names matter here; sizes are the loaded config's);
    an MoE family's for the expert implementation `experts` only (the two name the router differently)."""
    seen: dict[tuple[tuple[str, ...], tuple[str, ...]], Rule] = {}
    for config in family.config_variants():
        if experts is not None and getattr(config, "teswap_experts", experts) != experts:
            continue
        for rule in family.layer_rules(config, fuse_qkv=fuse_qkv):
            seen.setdefault((rule.hf, _expert_pattern(rule) if rule.kind == "split_experts" else rule.te), rule)
    return list(seen.values())


def hf_conversions(family: Family, *, fuse_qkv: bool, experts: str | None = None) -> list[Any]:
    """transformers' conversion list from the family's HF keys to the TE layout (empty where unsupported)."""
    ops = _transformers_ops()
    if ops is None:
        return []
    ours = _op_classes(ops)
    renamings, converters = [], []
    for rule in family_rule_names(family, fuse_qkv=fuse_qkv, experts=experts):
        if not rule.hf or (rule.kind == "rename" and rule.hf == rule.te):
            continue  # a TE-only zero tensor the layer makes itself, or a name both layouts share
        if rule.kind == "rename":
            renamings.append(ops.WeightRenaming(_escaped(rule.hf[0]), rule.te[0]))
        elif rule.kind == "split_experts":
            pattern = _expert_pattern(rule)
            converters.append(ops.WeightConverter(_escaped(rule.hf[0]), [_escaped(name) for name in pattern],
                                                  operations=[ours["ApplyRule"](family, fuse_qkv, (rule.hf, pattern))]))
        else:
            converters.append(ops.WeightConverter([_escaped(k) for k in rule.hf], list(rule.te),
                                                  operations=[ours["ApplyRule"](family, fuse_qkv, (rule.hf, rule.te))]))
    converters.append(ops.WeightConverter(r"embed_tokens\.weight", "embed_tokens.weight",
                                          operations=[ours["MarkLoaded"]()]))
    return [*renamings, *converters]


def composed_with_hf(previous: list[Any], family: Family, *, fuse_qkv: bool, experts: str | None) -> list[Any]:
    """transformers' own conversions of the model type, each one whose result our mapping converts further
    (an older MoE checkpoint's per-expert w1/w3 -> gate_up_proj -> GroupedLinear's weight{e}) extended by our
    operation, so that one converter does both (transformers applies at most one per key)."""
    ops = _transformers_ops()
    if ops is None:
        return previous
    ours = _op_classes(ops)
    splits = [rule for rule in family_rule_names(family, fuse_qkv=fuse_qkv, experts=experts)
              if rule.kind == "split_experts"]
    out = []
    for transform in previous:
        target = transform.target_patterns[0] if type(transform).__name__ == "WeightConverter" else None
        rule = next((r for r in splits if target and len(transform.target_patterns) == 1
                     and r.hf[0].endswith(target.lstrip("."))), None)
        if rule is None or target is None:
            out.append(transform)
            continue
        pattern = _expert_pattern(rule)
        # aligned with HF's target, which the matched part of a key is replaced by (".experts.gate_up_proj")
        ours_target = ["." + name.split(".", 1)[1] if target.startswith(".") else name for name in pattern]
        step = ours["AfterHF"](list(transform.operations), list(transform.source_patterns), target,
                               ours["ApplyRule"](family, fuse_qkv, (rule.hf, pattern)))
        out.append(ops.WeightConverter(list(transform.source_patterns), ours_target, operations=[step]))
    return out


@contextmanager
def conversions_registered(family: Family, *, fuse_qkv: bool, experts: str | None = None) -> Iterator[None]:
    """While the block runs, transformers loads (and saves) the family's checkpoints through its TE mapping."""
    transforms = hf_conversions(family, fuse_qkv=fuse_qkv, experts=experts)
    if not transforms:
        yield
        return
    from transformers import conversion_mapping

    model_type = family.model_types[0]
    previous = conversion_mapping.get_checkpoint_conversion_mapping(model_type)
    own = composed_with_hf(previous or [], family, fuse_qkv=fuse_qkv, experts=experts)
    conversion_mapping.register_checkpoint_conversion_mapping(model_type, [*own, *transforms], overwrite=True)
    _HF_OWN[model_type] = list(previous or [])
    try:
        yield
    finally:
        _HF_OWN.pop(model_type, None)
        if previous is not None:
            conversion_mapping.register_checkpoint_conversion_mapping(model_type, previous, overwrite=True)
        else:
            cache = conversion_mapping._checkpoint_conversion_mapping_cache
            if cache is not None:
                cache.pop(model_type, None)
            conversion_mapping.USER_REGISTERED_MAPPINGS.discard(model_type)

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
        match = mapping._LAYER_KEY.match(key)
        rest = match["rest"] if match else ""
        ignored = rest.endswith("_extra_state") or re.search(_IGNORED_LAYER_KEYS, key)
        if match and rest not in known and not ignored:
            out.append(key)
    return out


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

        def __init__(self, family: Family, fuse_qkv: bool, names: tuple[tuple[str, ...], tuple[str, ...]],
                     back: bool = False) -> None:
            self.family, self.fuse_qkv, self.names, self.back = family, fuse_qkv, names, back

        @torch.no_grad()
        def convert(self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str],
                    **kwargs: Any) -> dict[str, Any]:
            rule = _rule_named(self.family.layer_rules(kwargs["config"], fuse_qkv=self.fuse_qkv), self.names)
            if not self.back:
                _mark_layers(kwargs.get("model"))
            tensors = [_single(input_dict[pattern]) for pattern in source_patterns]
            converted = rule.to_hf(tensors) if self.back else rule.to_te(tensors)
            return {target: tensor.contiguous() for target, tensor in zip(target_patterns, converted, strict=True)}

        @property
        def reverse_op(self) -> Any:
            return ApplyRule(self.family, self.fuse_qkv, self.names, back=not self.back)

    return {"MarkLoaded": MarkLoaded, "ApplyRule": ApplyRule}


def _rule_named(rules: list[Rule], names: tuple[tuple[str, ...], tuple[str, ...]]) -> Rule:
    for rule in rules:
        if (rule.hf, rule.te) == names:
            return rule
    raise MappingError(f"this config's {names[0]} -> {names[1]} mapping is not the one registered for the swap")


def _single(tensors: Any) -> torch.Tensor:
    return tensors[0] if isinstance(tensors, list) else tensors


def _escaped(name: str) -> str:
    return name.replace(".", r"\.")


def family_rule_names(family: Family, *, fuse_qkv: bool) -> list[Rule]:
    """Every rule the family may have for any of its configs (names matter here; sizes are the loaded config's)."""
    seen: dict[tuple[tuple[str, ...], tuple[str, ...]], Rule] = {}
    for config in family.config_variants():
        for rule in family.layer_rules(config, fuse_qkv=fuse_qkv):
            seen.setdefault((rule.hf, rule.te), rule)
    return list(seen.values())


def hf_conversions(family: Family, *, fuse_qkv: bool) -> list[Any]:
    """transformers' conversion list from the family's HF keys to the TE layout (empty where unsupported)."""
    ops = _transformers_ops()
    if ops is None:
        return []
    ours = _op_classes(ops)
    renamings, converters = [], []
    for rule in family_rule_names(family, fuse_qkv=fuse_qkv):
        if not rule.hf or (rule.kind == "rename" and rule.hf == rule.te):
            continue  # a TE-only zero tensor the layer makes itself, or a name both layouts share
        if rule.kind == "rename":
            renamings.append(ops.WeightRenaming(_escaped(rule.hf[0]), rule.te[0]))
        else:
            converters.append(ops.WeightConverter([_escaped(k) for k in rule.hf], list(rule.te),
                                                  operations=[ours["ApplyRule"](family, fuse_qkv, (rule.hf, rule.te))]))
    converters.append(ops.WeightConverter(r"embed_tokens\.weight", "embed_tokens.weight",
                                          operations=[ours["MarkLoaded"]()]))
    return [*renamings, *converters]


@contextmanager
def conversions_registered(family: Family, *, fuse_qkv: bool) -> Iterator[None]:
    """While the block runs, transformers loads (and saves) the family's checkpoints through its TE mapping."""
    transforms = hf_conversions(family, fuse_qkv=fuse_qkv)
    if not transforms:
        yield
        return
    from transformers import conversion_mapping

    model_type = family.model_types[0]
    previous = conversion_mapping.get_checkpoint_conversion_mapping(model_type)
    conversion_mapping.register_checkpoint_conversion_mapping(model_type, [*(previous or []), *transforms],
                                                              overwrite=True)
    try:
        yield
    finally:
        if previous is not None:
            conversion_mapping.register_checkpoint_conversion_mapping(model_type, previous, overwrite=True)
        else:
            cache = conversion_mapping._checkpoint_conversion_mapping_cache
            if cache is not None:
                cache.pop(model_type, None)
            conversion_mapping.USER_REGISTERED_MAPPINGS.discard(model_type)

"""`from_pretrained` under the swap: HF checkpoints land in the TE layout, or loading fails saying why.

`LlamaForCausalLM.from_pretrained(DIR)` inside `replace_decoder` builds TE-layout layers whose
parameter names are not the checkpoint's. transformers 5.x renames and converts checkpoint keys while
it loads (its checkpoint conversion mappings, the machinery it uses for MoE and fused checkpoints);
for as long as a swap is active, `conversions_registered` registers one for the family's model type
built from teswap.swap.mapping's tables: q/k/v/o and the norms renamed, gate and up concatenated
into fc1 ([gate; up], SiLU on the first half), q/k/v fused in TE's group-interleaved order when the
layer keeps one fused QKV weight. Saving inside the block applies the same mapping in reverse, so
`save_pretrained` writes a stock checkpoint.

A partial load must never pass for a model (TE's example skips missing keys silently). So:
- a checkpoint key of a decoder layer that the mapping has no place for (read from the safetensors
  headers of a local checkpoint) fails the load: transformers reports it as a conversion error and
  raises after its load report;
- the load marks every swapped layer as coming from a checkpoint, and when from_pretrained finishes
  (its closing `model.eval()`), a layer with a weight the checkpoint did not hold raises MappingError
  naming it (teswap.layers.hf_adapter.check_loaded);
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
from teswap.layers.hf_adapter import FROM_CHECKPOINT, head_dim_of
from teswap.layers.rope import bind_rope
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
    base = getattr(model, "model", model)
    layers = base.get_submodule("layers")
    for layer in layers:
        setattr(layer, FROM_CHECKPOINT, True)
    bind_rope(model)
    finish_swapped_model(model, type(layers[0]))  # the same HF metadata a built pair gets
    unmapped = unmapped_layer_keys(checkpoint_keys(getattr(model.config, "_name_or_path", "")))
    if unmapped:
        raise MappingError(f"checkpoint keys with no place in the TE layout of the swapped layers: "
                           f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''} "
                           f"(mapped per layer: {', '.join(sorted(mapping.HF_LAYER_KEYS))})")


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


def unmapped_layer_keys(keys: list[str]) -> list[str]:
    """Decoder-layer keys that are neither HF keys the mapping converts, TE-layout keys (a swapped model
    saved outside the swap) that load as they are, nor keys transformers itself ignores."""
    known = mapping.HF_LAYER_KEYS | mapping.te_layer_keys(fuse_qkv=False) | mapping.te_layer_keys(fuse_qkv=True)
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

    class FuseQKV(ops.ConversionOps):
        """q, k, v row blocks -> TE's group-interleaved fused QKV weight (and back when saving)."""

        def __init__(self, unfuse: bool = False) -> None:
            self.unfuse = unfuse

        @torch.no_grad()
        def convert(self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str],
                    **kwargs: Any) -> dict[str, Any]:
            config = kwargs["config"]
            groups, head_dim = config.num_key_value_heads or config.num_attention_heads, head_dim_of(config)
            if self.unfuse:
                qkv = mapping.unfuse_qkv(_single(input_dict[source_patterns[0]]), heads=config.num_attention_heads,
                                         groups=groups, head_dim=head_dim)
                return {target: tensor.contiguous() for target, tensor in zip(target_patterns, qkv, strict=True)}
            _mark_layers(kwargs.get("model"))
            q, k, v = (_single(input_dict[pattern]) for pattern in source_patterns)
            return {target_patterns[0]: mapping.fuse_qkv(q, k, v, groups=groups, head_dim=head_dim)}

        @property
        def reverse_op(self) -> Any:
            return FuseQKV(unfuse=not self.unfuse)

    return {"MarkLoaded": MarkLoaded, "FuseQKV": FuseQKV}


def _single(tensors: Any) -> torch.Tensor:
    return tensors[0] if isinstance(tensors, list) else tensors


def _escaped(name: str) -> str:
    return name.replace(".", r"\.")


def hf_conversions(*, fuse_qkv: bool) -> list[Any]:
    """transformers' conversion list from HF Llama keys to the TE layout (empty where unsupported)."""
    ops = _transformers_ops()
    if ops is None:
        return []
    ours = _op_classes(ops)
    renamings = [ops.WeightRenaming(_escaped(hf), te) for hf, te in mapping._ONE_TO_ONE.items()]
    if not fuse_qkv:
        renamings += [ops.WeightRenaming(_escaped(hf), te) for hf, te in mapping._SPLIT_QKV.items()]
    converters = [
        ops.WeightConverter([_escaped(k) for k in mapping._GATE_UP], mapping._FC1, operations=[ops.Concatenate(dim=0)]),
        ops.WeightConverter(r"embed_tokens\.weight", "embed_tokens.weight", operations=[ours["MarkLoaded"]()]),
    ]
    if fuse_qkv:
        converters.append(ops.WeightConverter([_escaped(k) for k in mapping._SPLIT_QKV], mapping._FUSED_QKV,
                                              operations=[ours["FuseQKV"]()]))
    return [*renamings, *converters]


@contextmanager
def conversions_registered(model_type: str, *, fuse_qkv: bool) -> Iterator[None]:
    """While the block runs, transformers loads (and saves) `model_type` checkpoints through the TE mapping."""
    transforms = hf_conversions(fuse_qkv=fuse_qkv)
    if not transforms:
        yield
        return
    from transformers import conversion_mapping

    previous = conversion_mapping.get_checkpoint_conversion_mapping(model_type)
    conversion_mapping.register_checkpoint_conversion_mapping(model_type, transforms, overwrite=True)
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

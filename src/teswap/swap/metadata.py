"""HF's model-level metadata, made to follow the swap: what records outputs, what must not be split, TP.

HF reads three things from the model class rather than from its modules:
- `_can_record_outputs`: `output_hidden_states=True` hooks every instance of the class named there
  (LlamaDecoderLayer, Qwen2DecoderLayer, ...); swapped layers are not instances of it, so
  hidden_states came back empty. HF keys this by the model's class (`str(model.__class__)`, in a
  registry filled when a model is built), so every base model built under the swap, whichever name
  its class was reached by (imported before the swap or not, the `model` or `transformer` of a
  head), becomes an instance of a subclass (`swapped_model_class`) that names the swapped decoder
  class, and nothing for "attentions" (the layers refuse output_attentions). The subclass keeps the
  base class's `__name__`, so a saved config still says "LlamaModel".
- `_no_split_modules`: what device_map="auto" keeps on one device; it must name the swapped class.
- the tensor-parallel plan (config.base_model_tp_plan) names q_proj/k_proj/...: modules a swapped
  layer does not have, and TE's split or fused QKV is not a plain Linear HF could shard. TE does its
  own tensor parallelism (tp_group/tp_size on its modules), which teswap does not wire: the plan is
  removed so HF reports no TP support (`supports_tp_plan` is False), and `refuse_tensor_parallel`
  says why when a caller asks for one.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from teswap.errors import UnsupportedConfigError
from teswap.layers.hf_adapter import FROZEN_ZERO

_SUBCLASSES: dict[tuple[type, type], type] = {}

TENSOR_PARALLEL_REFUSAL = (
    "tensor-parallel plans are not supported for a swapped model: HF's plan shards q_proj/k_proj/... "
    "Linears that TE-layout layers replace, and TransformerEngine's own tensor parallelism (tp_group/"
    "tp_size) is not wired by teswap; load without tp_plan"
)


def swapped_model_class(base: type, decoder_cls: type) -> type:
    """`base` (e.g. LlamaModel) whose output recording and no-split list name `decoder_cls` (cached)."""
    base = getattr(base, "__teswap_base__", base)  # a nested swap subclasses the family's own class
    key = (base, decoder_cls)
    if key not in _SUBCLASSES:
        attrs = {
            "__module__": __name__,
            "__qualname__": f"{base.__qualname__}[{decoder_cls.__name__}]",
            "__doc__": f"{base.__name__} built with {decoder_cls.__name__} decoder layers (teswap swap).",
            "_no_split_modules": [decoder_cls.__name__],
            "_can_record_outputs": recorded_outputs(decoder_cls),
            "__teswap_base__": base,
        }
        _SUBCLASSES[key] = type(base.__name__, (base,), attrs)  # same __name__: configs save "LlamaModel"
    return _SUBCLASSES[key]


def recorded_outputs(decoder_cls: type) -> dict[str, Any]:
    """What output_hidden_states / output_router_logits hook: the swapped layers, and an MoE layer's router
    (HF's own router class under HF experts, else the swapped layers' router; logits are its output 0)."""
    recorded: dict[str, Any] = {"hidden_states": decoder_cls}
    router = getattr(decoder_cls, "router_class", None)
    if router is not None:
        from transformers.utils.output_capturing import OutputRecorder

        recorded["router_logits"] = OutputRecorder(router, index=0)
    return recorded


def prepare_swapped_config(config: PretrainedConfig) -> None:
    """Drop the tensor-parallel plan from a config a swapped model is about to be built from."""
    config.base_model_tp_plan = None  # type: ignore[misc]  # an instance value shadows the class plan


def holds_swapped_layers(model: nn.Module, decoder_cls: type) -> bool:
    """Whether `model` is the base model itself: it holds the swapped layers directly."""
    layers = getattr(model, "layers", None)
    return isinstance(layers, nn.ModuleList) and len(layers) > 0 and isinstance(layers[0], decoder_cls)


def _register_output_recording(model: PreTrainedModel) -> None:
    """HF's registry of what each model class records, keyed by the class's str (5.17: a plain dict
    of that key; 5.2x: a dict subclass whose setitem takes the model; both read by that key)."""
    from transformers.utils import output_capturing

    dict.__setitem__(output_capturing._CAN_RECORD_REGISTRY, str(model.__class__), model._can_record_outputs)


def finish_swapped_model(model: PreTrainedModel, decoder_cls: type) -> None:
    """The metadata of a model built under the swap (base model or head), as HF collected it from stock classes."""
    if holds_swapped_layers(model, decoder_cls):
        model.__class__ = swapped_model_class(type(model), decoder_cls)
        _register_output_recording(model)
        layers: Any = model.layers
        frozen = {name for layer in layers for name in getattr(layer, FROZEN_ZERO, ())}
        # TE-only biases no HF checkpoint holds: not "missing" when one loads (heads merge this in post_init)
        model._keys_to_ignore_on_load_missing = set(model._keys_to_ignore_on_load_missing or ()) | {
            rf"layers\.\d+\.{re.escape(name)}$" for name in frozen}
    model._no_split_modules = {decoder_cls.__name__}  # post_init merged the stock decoder's name in
    for module in (model, getattr(model, "base_model", model)):
        if getattr(module, "_tp_plan", None):
            module._tp_plan = {}  # type: ignore[assignment]


def refuse_tensor_parallel(tp_plan: Any) -> None:
    """Raise UnsupportedConfigError when a caller asks for a tensor-parallel plan on a swapped model."""
    if tp_plan:
        raise UnsupportedConfigError(TENSOR_PARALLEL_REFUSAL)

"""HF's model-level metadata, made to follow the swap: what records outputs, what must not be split, TP.

HF reads three things from the model class rather than from its modules:
- `_can_record_outputs`: `output_hidden_states=True` hooks every instance of the class named there
  (LlamaDecoderLayer); swapped layers are not instances of it, so hidden_states came back empty. HF
  keys this by the model class (`str(model.__class__)`), so the swap builds the base model as a
  subclass (`swapped_model_class`) that names the swapped decoder class, and nothing for
  "attentions" (the layers refuse output_attentions).
- `_no_split_modules`: what device_map="auto" keeps on one device; it must name the swapped class.
- the tensor-parallel plan (config.base_model_tp_plan) names q_proj/k_proj/...: modules a swapped
  layer does not have, and TE's split or fused QKV is not a plain Linear HF could shard. TE does its
  own tensor parallelism (tp_group/tp_size on its modules), which teswap does not wire: the plan is
  removed so HF reports no TP support (`supports_tp_plan` is False), and `refuse_tensor_parallel`
  says why when a caller asks for one.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from teswap.errors import UnsupportedConfigError

_SUBCLASSES: dict[tuple[type, type], type] = {}

TENSOR_PARALLEL_REFUSAL = (
    "tensor-parallel plans are not supported for a swapped model: HF's plan shards q_proj/k_proj/... "
    "Linears that TE-layout layers replace, and TransformerEngine's own tensor parallelism (tp_group/"
    "tp_size) is not wired by teswap; load without tp_plan"
)


def swapped_model_class(base: type, decoder_cls: type) -> type:
    """`base` (e.g. LlamaModel) whose output recording and no-split list name `decoder_cls` (cached)."""
    key = (base, decoder_cls)
    if key not in _SUBCLASSES:
        attrs = {
            "__module__": __name__,
            "__doc__": f"{base.__name__} built with {decoder_cls.__name__} decoder layers (teswap swap).",
            "_no_split_modules": [decoder_cls.__name__],
            "_can_record_outputs": {"hidden_states": decoder_cls},
            "__teswap_base__": base,  # nested swaps subclass the family's own class, not a subclass
        }
        _SUBCLASSES[key] = type(f"{base.__name__}With{decoder_cls.__name__}", (base,), attrs)
    return _SUBCLASSES[key]


def prepare_swapped_config(config: PretrainedConfig) -> None:
    """Drop the tensor-parallel plan from a config a swapped model is about to be built from."""
    config.base_model_tp_plan = None  # type: ignore[misc]  # an instance value shadows the class plan


def finish_swapped_model(model: PreTrainedModel, decoder_cls: type) -> None:
    """Instance-level metadata HF collected at build time from the stock class attributes."""
    model._no_split_modules = {decoder_cls.__name__}  # post_init merged the stock "LlamaDecoderLayer" in
    for module in (model, model.base_model):
        if getattr(module, "_tp_plan", None):
            module._tp_plan = {}  # type: ignore[assignment]


def refuse_tensor_parallel(tp_plan: Any) -> None:
    """Raise UnsupportedConfigError when a caller asks for a tensor-parallel plan on a swapped model."""
    if tp_plan:
        raise UnsupportedConfigError(TENSOR_PARALLEL_REFUSAL)

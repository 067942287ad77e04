"""Model families whose decoder layer teswap can swap: a plain registry, name -> Family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from transformers import PretrainedConfig, PreTrainedModel

from teswap.errors import SourceError


def _llama_module() -> ModuleType:
    from transformers.models.llama import modeling_llama

    return modeling_llama


@dataclass(frozen=True, kw_only=True)
class Family:
    """Where a family's decoder class lives, and which configs belong to it."""

    name: str
    load_module: Callable[[], ModuleType]  # the modeling module whose global we patch
    decoder_class_name: str  # looked up as a module global by the model's __init__
    model_class_name: str  # the base model, looked up as a module global by the causal LM's __init__
    causal_lm_class_name: str
    model_types: tuple[str, ...]  # config.model_type values of this family

    def module(self) -> ModuleType:
        return self.load_module()

    def causal_lm_class(self) -> type[PreTrainedModel]:
        return getattr(self.module(), self.causal_lm_class_name)


# Mistral, Qwen2 and Qwen3 share Llama's decoder signature (REFERENCE.md §3); each is added here
# with its module once its config differences (sliding window, q/k/v bias, q/k norm) are mapped.
FAMILIES: dict[str, Family] = {
    "llama": Family(
        name="llama",
        load_module=_llama_module,
        decoder_class_name="LlamaDecoderLayer",
        model_class_name="LlamaModel",
        causal_lm_class_name="LlamaForCausalLM",
        model_types=("llama",),
    ),
}


def get_family(name: str) -> Family:
    """The registered family called `name`, or a SourceError listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise SourceError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def family_for_config(config: PretrainedConfig) -> Family:
    """The family whose model_types include config.model_type."""
    for family in FAMILIES.values():
        if config.model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise SourceError(f"model_type {config.model_type!r} is not supported yet; supported: {', '.join(known)}")

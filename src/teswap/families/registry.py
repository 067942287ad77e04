"""The families teswap can swap: a plain dict from name to adapter, and the lookups around it."""

from __future__ import annotations

from transformers import PretrainedConfig

from teswap.errors import SourceError, UnsupportedConfigError
from teswap.families.base import Family
from teswap.families.gemma import Gemma
from teswap.families.gemma2 import Gemma2
from teswap.families.gemma3 import Gemma3Text
from teswap.families.llama import Llama
from teswap.families.mistral import Mistral
from teswap.families.phi3 import Phi3
from teswap.families.qwen2 import Qwen2
from teswap.families.qwen3 import Qwen3
from teswap.layers.backends import get_backend

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Llama(), Mistral(), Qwen2(), Qwen3(), Phi3(), Gemma(), Gemma3Text(), Gemma2())}
# model types whose text decoder lives inside a multimodal model: named so the refusal can say what to do
_MULTIMODAL = {"gemma3": "gemma3_text (Gemma3ForCausalLM, the text model)"}


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
    if config.model_type in _MULTIMODAL:
        raise UnsupportedConfigError(f"model_type {config.model_type!r} is multimodal; swap its text model: "
                                     f"{_MULTIMODAL[config.model_type]}")
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise SourceError(f"model_type {config.model_type!r} is not supported yet; supported: {', '.join(known)}")


def decoder_class(family: str, backend: str = "torch", *, fuse_qkv: bool = False) -> type:
    """The swapped decoder-layer class of `family` on `backend` ("torch" or "te"), for `replace_decoder`."""
    return get_backend(backend).decoder_class(get_family(family), fuse_qkv)

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
from teswap.families.mixtral import Mixtral
from teswap.families.moe import MoEFamily
from teswap.families.phi3 import Phi3
from teswap.families.qwen2 import Qwen2
from teswap.families.qwen3 import Qwen3
from teswap.families.qwen3_moe import Qwen3Moe
from teswap.layers.backends import get_backend
from teswap.layers.plan import GROUPED_EXPERTS

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Llama(), Mistral(), Qwen2(), Qwen3(), Phi3(), Gemma(), Gemma3Text(), Gemma2(), Mixtral(), Qwen3Moe())}
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


def plan_source(family: str, experts: str | None = None) -> Family:
    """The family, or for an MoE family its variant with `experts` ("grouped", the default, or "hf")."""
    found = get_family(family)
    if isinstance(found, MoEFamily):
        return found.with_experts(experts or GROUPED_EXPERTS)
    if experts is not None:
        raise UnsupportedConfigError(f"experts={experts!r}: {family} has no mixture-of-experts layers")
    return found


def decoder_class(family: str, backend: str = "torch", *, fuse_qkv: bool = False, experts: str | None = None) -> type:
    """The swapped decoder-layer class of `family` on `backend` ("torch" or "te"), for `replace_decoder`;
    an MoE family's with the expert implementation `experts` ("grouped", the default, or "hf")."""
    return get_backend(backend).decoder_class(plan_source(family, experts), fuse_qkv)

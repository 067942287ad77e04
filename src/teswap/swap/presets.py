"""Named model configs, as Python functions: each family's own (tiny ones for CPU, published shapes
for GPUs; random weights from a seed), gathered in one registry. A preset lives in its family's module."""

from __future__ import annotations

from collections.abc import Callable

from transformers import PretrainedConfig

from teswap.families import FAMILIES
from teswap.families.llama import tiny, tiny_llama3

PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    name: preset for family in FAMILIES.values() for name, preset in family.presets.items()}

__all__ = ["PRESETS", "tiny", "tiny_llama3"]

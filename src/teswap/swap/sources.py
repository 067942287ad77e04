"""Resolve a model source (preset name, config object, local directory) to a config."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from teswap.errors import SourceError
from teswap.swap.presets import PRESETS

Source = str | Path | PretrainedConfig


@dataclass(frozen=True, kw_only=True)
class ResolvedSource:
    """A config to build from, and the directory holding its weights, if any."""

    name: str  # preset name, directory path or "config"
    config: PretrainedConfig
    weights_dir: Path | None  # a local directory with *.safetensors, loaded with from_pretrained


def resolve_source(source: Source) -> ResolvedSource:
    """Turn a preset name, a PretrainedConfig or a local directory into a ResolvedSource."""
    if isinstance(source, PretrainedConfig):
        return ResolvedSource(name="config", config=copy.deepcopy(source), weights_dir=None)
    if isinstance(source, str) and source in PRESETS:
        return ResolvedSource(name=source, config=PRESETS[source](), weights_dir=None)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} is a directory but has no config.json")
        try:  # a local path: transformers reads it without touching the hub
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
            raise SourceError(f"cannot read {path / 'config.json'}: {err}") from None
        has_weights = any(path.glob("*.safetensors"))
        return ResolvedSource(name=str(path), config=config, weights_dir=path if has_weights else None)
    raise SourceError(
        f"unknown model source {str(source)!r}: not a preset ({', '.join(PRESETS)}) "
        "nor a local directory with config.json"
    )

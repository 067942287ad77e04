"""Resolve a model source to a config, and to the local weights and tokenizer when it has them.

A source is one of:
- a config preset name (teswap.swap.presets: random weights from a seed),
- a named real checkpoint (teswap.swap.checkpoints, e.g. `smollm2-135m`),
- a PretrainedConfig,
- a local path: an HF directory (config.json with one or sharded *.safetensors and an index), a hub
  cache folder (models--org--name, resolved to its snapshot), a .gguf file, or a directory holding
  exactly one .gguf and no config.json (GGUF is converted once to a cached safetensors directory).
Nothing is downloaded: every read is local.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from teswap.errors import SourceError
from teswap.swap.checkpoint_checks import check_checkpoint
from teswap.swap.checkpoints import CHECKPOINTS, gguf_to_safetensors, hub_snapshot
from teswap.swap.presets import PRESETS

Source = str | Path | PretrainedConfig
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True, kw_only=True)
class ResolvedSource:
    """A config to build from, and the directory holding its weights (and tokenizer), if any."""

    name: str  # preset or checkpoint name, directory path, or "config"
    config: PretrainedConfig
    weights_dir: Path | None  # a local directory with *.safetensors, loaded with from_pretrained
    tokenizer_dir: Path | None = None  # where a tokenizer was found, if any

    def load_tokenizer(self) -> Any:
        """The checkpoint's tokenizer (local files only), or None when it has none."""
        if self.tokenizer_dir is None:
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)


def resolve_source(source: Source) -> ResolvedSource:
    """Turn a preset or checkpoint name, a PretrainedConfig or a local path into a ResolvedSource."""
    if isinstance(source, PretrainedConfig):
        return ResolvedSource(name="config", config=copy.deepcopy(source), weights_dir=None)
    if isinstance(source, str) and source in PRESETS:
        return ResolvedSource(name=source, config=PRESETS[source](), weights_dir=None)
    if isinstance(source, str) and source in CHECKPOINTS:
        return _from_path(CHECKPOINTS[source](), name=source)
    path = Path(source)
    if path.exists():
        return _from_path(path, name=str(path))
    raise SourceError(
        f"unknown model source {str(source)!r}: not a preset ({', '.join(PRESETS)}), a named checkpoint "
        f"({', '.join(CHECKPOINTS)}), nor a local directory or .gguf file"
    )


def _from_path(path: Path, *, name: str) -> ResolvedSource:
    directory = _checkpoint_directory(path)
    if not (directory / "config.json").is_file():
        raise SourceError(f"{path} has no config.json (nor a single .gguf file to convert)")
    try:  # a local path: transformers reads it without touching the hub
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure is the user's file
        raise SourceError(f"cannot read {directory / 'config.json'}: {err}") from None
    check_checkpoint(directory, config)  # unreadable, truncated, missing or mismatched weights: one line
    has_weights = any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json"))
    has_tokenizer = any((directory / file).is_file() for file in _TOKENIZER_FILES)
    return ResolvedSource(name=name, config=config, weights_dir=directory if has_weights else None,
                          tokenizer_dir=directory if has_tokenizer else None)


def _checkpoint_directory(path: Path) -> Path:
    """The HF directory a path stands for: itself, its hub snapshot, or its GGUF file's cached conversion."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf checkpoint; pass its directory")
        return gguf_to_safetensors(path)
    snapshot = hub_snapshot(path)
    if snapshot is not None:
        return snapshot
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return gguf_to_safetensors(ggufs[0])
    return path

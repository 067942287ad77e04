"""A local checkpoint checked before anything is built from it, each fault one SourceError naming the file.

- weights in a format teswap does not load (pickled `.bin`, TF, Flax) with no safetensors are refused, not
  replaced by a randomly initialised model;
- every `*.safetensors` file readable and whole: an 8-byte little-endian header length, a JSON header of
  name -> dtype, shape and data offsets, then the data, which must reach every tensor's last byte (a
  download cut short, or a file that is no safetensors at all, fails here, not as a traceback);
- every shard a `*.safetensors.index.json` names present, holding the tensors it is said to hold;
- the weights those of the model config.json describes: their names and shapes against the architecture
  of the config's model_type built on the meta device (nothing allocated). Tensors the architecture needs
  and no file holds, tensors it has no place for (config and weights of different model families, or of
  models with different layer counts), and shapes that disagree with the config are each refused.

Only headers are read, so a 500 MB checkpoint is checked in milliseconds; the result is cached per file
state. What headers cannot show (a load that fails later) `loading_errors` turns into one line too.
"""

from __future__ import annotations

import copy
import json
import math
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from teswap.errors import SourceError, TeswapError

HEADER_LIMIT_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
# Keys old checkpoints carry that transformers itself drops on load.
IGNORED_KEYS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
EXAMPLES = 3  # keys named in a message


def check_checkpoint(directory: Path, config: PretrainedConfig) -> None:
    """Refuse a checkpoint whose files are unreadable, truncated, missing or not the model config.json describes."""
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file())
    key = (str(directory), files, config.to_json_string(use_diff=False))
    if key in _CHECKED:  # sources are resolved several times a run; the files have not changed since
        return
    _refuse_other_formats(directory)
    weights, indexes = sorted(directory.glob("*.safetensors")), sorted(directory.glob("*.safetensors.index.json"))
    shapes: dict[str, tuple[list[int], str]] = {}  # tensor -> (shape, file name)
    for path in weights:
        for name, shape in tensor_shapes(path).items():
            shapes[name] = (shape, path.name)
    for index in indexes:
        _check_index(index, shapes)
    expected = expected_shapes(config) if weights or indexes else None  # config.json alone: built from the seed
    if expected is not None:
        _check_against_config(directory, shapes, expected, config)
    _CHECKED.add(key)


_CHECKED: set[tuple] = set()
OTHER_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack")


def _refuse_other_formats(directory: Path) -> None:
    """Weights teswap does not read (pickled torch, TF, Flax) beside no safetensors would build a random model."""
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json")):
        return
    other = sorted(p.name for pattern in OTHER_WEIGHTS for p in directory.glob(pattern))
    if other:
        raise SourceError(f"{directory}: weights as {', '.join(other[:EXAMPLES])} but no *.safetensors: teswap loads "
                          "safetensors only (convert with save_pretrained(..., safe_serialization=True)), and would "
                          "otherwise build the config with random weights")


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header, after checking the file holds all their data."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SourceError(f"{path}: unreadable safetensors file: {size} bytes, shorter than its 8-byte header "
                              "length (an empty or truncated file)")
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT_BYTES:
            raise SourceError(f"{path}: not a safetensors file: its first 8 bytes give a header of {length} bytes "
                              f"(safetensors allows {HEADER_LIMIT_BYTES}); the file is corrupt or of another format")
        if 8 + length > size:
            raise SourceError(f"{path}: truncated safetensors file: its header needs {length} bytes, the file has "
                              f"{size - 8} after the length field (a download or copy cut short)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{path}: unreadable safetensors header ({err}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path}: unreadable safetensors header (not a JSON object); the file is corrupt")
    return _shapes_in(path, header, data_bytes=size - 8 - length)


def _shapes_in(path: Path, header: dict[str, Any], *, data_bytes: int) -> dict[str, list[int]]:
    shapes, end_max, last = {}, 0, ""
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{path}: unreadable safetensors header: entry {name!r} has no dtype, shape and "
                              "data_offsets; the file is corrupt") from None
        nbytes = math.prod(shape) * DTYPE_BYTES.get(dtype, 0)
        if dtype in DTYPE_BYTES and end - begin != nbytes:
            raise SourceError(f"{path}: corrupt safetensors header: {name} is {dtype} {shape} ({nbytes} bytes) "
                              f"but spans {end - begin} bytes")
        if end > end_max:
            end_max, last = end, name
        shapes[name] = shape
    if end_max > data_bytes:
        raise SourceError(f"{path}: truncated safetensors file: tensor {last} ends at byte {end_max} of the data, "
                          f"the file holds {data_bytes} (a download or copy cut short)")
    return shapes


def _check_index(index: Path, shapes: dict[str, tuple[list[int], str]]) -> None:
    """Every shard the index names exists and holds the tensors the index puts in it."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        assert isinstance(weight_map, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
        raise SourceError(f"{index}: unreadable shard index ({type(err).__name__}: {err}); it needs a "
                          "\"weight_map\" of tensor -> shard file") from None
    shards = sorted(set(weight_map.values()))
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:
        raise SourceError(f"{index}: shard {missing[0]} is missing ({len(missing)} of {len(shards)} shards absent"
                          f"{': ' + ', '.join(missing[1:EXAMPLES]) + ' ...' if len(missing) > 1 else ''}); "
                          "copy or download every shard")
    for name, shard in weight_map.items():
        if shapes.get(name, (None, None))[1] != shard:
            raise SourceError(f"{index}: says {name} is in {shard}, which does not hold it; the index and the "
                              "shards are of different checkpoints")


def expected_shapes(config: PretrainedConfig) -> dict[str, Any] | None:
    """The causal LM of the config's model_type on the meta device: tensor -> shape, tied groups and ignore lists.

    None where transformers has no causal LM for the config (the family check refuses it later, saying why),
    and where it converts checkpoint keys while loading (MoE experts): names then differ by design.
    """
    from transformers import AutoModelForCausalLM
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    if get_checkpoint_conversion_mapping(getattr(config, "model_type", None)) is not None:
        return None
    import torch

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - not buildable as a causal LM: not this check's to explain
        return None
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    ignored = [*(model._keys_to_ignore_on_load_missing or []), *(model._keys_to_ignore_on_load_unexpected or [])]
    return {"shapes": {name: list(tensor.shape) for name, tensor in model.state_dict(keep_vars=True).items()},
            "tied": [names for names in groups.values() if len(names) > 1], "ignored": ignored,
            "prefix": model.base_model_prefix, "architecture": type(model).__name__}


def _check_against_config(root: Path, shapes: dict[str, tuple[list[int], str]], expected: dict[str, Any],
                          config: PretrainedConfig) -> None:
    wanted: dict[str, list[int]] = expected["shapes"]
    found = {_model_key(name, wanted, expected["prefix"]): value for name, value in shapes.items()
             if not IGNORED_KEYS.search(name) and not _ignored(name, expected["ignored"])}
    tied = {name for names in expected["tied"] if any(n in found for n in names) for name in names}
    missing = [name for name in wanted if name not in found and name not in tied
               and not _ignored(name, expected["ignored"])]
    unexpected = [name for name in found if name not in wanted]
    what = (f"config.json's model_type {getattr(config, 'model_type', None)!r} "
            f"({', '.join(getattr(config, 'architectures', None) or [expected['architecture']])})")
    if missing or unexpected:
        raise SourceError(f"{root}: the weights do not match {what}: " + _difference(missing, unexpected))
    for name in wanted:  # in the model's order: the first layer's first wrong tensor is named
        shape, file = found.get(name, (wanted[name], ""))
        if shape != wanted[name]:
            raise SourceError(f"{root / file}: {name} has shape {shape}, but {what} implies {wanted[name]}; "
                              "config.json and the weights are of different model sizes")


def _difference(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors it needs are in no safetensors file ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors have no place in it ({_examples(unexpected)})")
    verdict = ("config.json and the weights are of different model families or shapes" if unexpected
               else "the checkpoint is incomplete")
    return " and ".join(parts) + f"; {verdict}"


def _examples(names: list[str]) -> str:
    return "e.g. " + ", ".join(names[:EXAMPLES]) + (" ..." if len(names) > EXAMPLES else "")


def _model_key(name: str, wanted: dict[str, list[int]], prefix: str) -> str:
    """A checkpoint key as the model names it: base-model checkpoints omit the `model.` prefix."""
    return f"{prefix}.{name}" if name not in wanted and f"{prefix}.{name}" in wanted else name


def _ignored(name: str, patterns: list[str]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


@contextmanager
def loading_errors(what: str) -> Iterator[None]:
    """Any failure of a loader inside the block (transformers', gguf's) as one SourceError: `what`, then the cause."""
    try:
        yield
    except TeswapError:
        raise
    except Exception as err:  # noqa: BLE001 - a checkpoint that cannot be loaded is the user's file
        text = str(err).strip().splitlines()
        raise SourceError(f"{what}: {type(err).__name__}: {text[0] if text else ''}") from None

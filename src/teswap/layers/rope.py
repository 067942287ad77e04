"""One RoPE table per model, derived from the HF model's own rotary embedding.

TE's example builds a max_position_embeddings-long table per layer with TE's default base 10000,
ignoring rope_theta and rope scaling. Here the frequencies come from the HF rotary module's
`inv_freq` (which already folds in rope_theta and llama3/yarn/linear scaling) at the positions
actually used, in fp32, in TE's layout [s, 1, 1, d]. TE's freqs cannot carry HF's
`attention_scaling` (yarn, longrope multiply cos and sin by it); since RoPE is a rotation, scaling q
and k by c equals scaling the softmax by c^2, which is how the layers honour it
(`attention_softmax_scale`).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import torch
from torch import nn

from teswap.errors import UnsupportedInputError


class RopeTable:
    """Shared by every swapped layer of one model; computes freqs once per forward."""

    def __init__(self, rotary_emb: nn.Module) -> None:
        self.rotary_emb = rotary_emb  # the HF model's module (not registered: no state-dict entry)
        self._cached: tuple[torch.Tensor, tuple[int, int | None], torch.Tensor] | None = None
        # What one forward's first layer works out for all layers of the model (the te backend's TEBatch).
        self.per_forward: dict[str, Any] = {}

    @property
    def attention_scaling(self) -> float:
        return float(getattr(self.rotary_emb, "attention_scaling", 1.0))

    def freqs(self, position_ids: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
        """fp32 cat(f, f) at `position_ids`: [s, 1, 1, d] for [s] or [1, s] (TE's layout), [s, b, 1, d] for [b, s].

        No position_ids means 0..s-1. Rows are never compared (that would be a host sync): a [b, s]
        tensor gets per-row freqs, which equal the shared table when the rows are equal.
        """
        inv_freq = self.rotary_emb.get_buffer("inv_freq")
        if torch.compiler.is_compiling():  # no Python-side cache in a traced graph
            return self._angles(self._positions(position_ids, seq_len, device), inv_freq)
        # Dynamic rope rewrites inv_freq in place; a decode loop may advance one position tensor in place.
        version = (inv_freq._version, None if position_ids is None else position_ids._version)
        cached = self._cached
        if cached is not None and cached[0] is position_ids and cached[1] == version and position_ids is not None:
            return cached[2]
        result = self._angles(self._positions(position_ids, seq_len, device), inv_freq)
        if position_ids is not None:  # holding the tensor keeps its id from being reused
            self._cached = (position_ids, version, result)
        return result

    def table(self, length: int, device: torch.device) -> torch.Tensor:
        """fp32 [length, 1, 1, d] at positions 0..length-1: TE's table, which TE indexes per row itself."""
        inv_freq = self.rotary_emb.get_buffer("inv_freq")
        return self._angles(torch.arange(length, device=device, dtype=torch.float32)[:, None], inv_freq)

    @staticmethod
    def _angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
        """[s, rows] positions -> [s, rows, 1, d] angles."""
        angles = positions[..., None] * inv_freq.to(device=positions.device, dtype=torch.float32)
        return torch.cat((angles, angles), dim=-1).unsqueeze(2)

    @staticmethod
    def _positions(position_ids: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
        """Positions as fp32 [s, rows] (rows = 1 when shared by the batch)."""
        if position_ids is None:
            return torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
        if position_ids.dim() == 1:
            position_ids = position_ids.unsqueeze(0)
        if position_ids.shape[-1] != seq_len:
            raise UnsupportedInputError(
                f"position_ids cover {position_ids.shape[-1]} positions but the input has {seq_len}"
            )
        return position_ids.to(device=device, dtype=torch.float32).transpose(0, 1)


_TABLES_BY_CONFIG: dict[int, RopeTable] = {}


def shared_table_for(config) -> RopeTable:
    """One table per config object, over a rotary module built from it as the HF model builds its own.

    Layers built by `replace_decoder` alone (TE's example pattern) use this until `bind_rope` points
    them at the model's own rotary module; either way all layers of a model share one table.
    """
    key = id(config)
    table = _TABLES_BY_CONFIG.get(key)
    if table is None:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        # transformers builds models for from_pretrained on the meta device; a meta inv_freq could never
        # be read, so a table made then lives on the CPU until `bind_rope` replaces it.
        on_meta = torch.get_default_device().type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            table = RopeTable(LlamaRotaryEmbedding(config=config))
        _TABLES_BY_CONFIG[key] = table
        weakref.finalize(config, _TABLES_BY_CONFIG.pop, key, None)
    return table


def attention_softmax_scale(table: RopeTable, head_dim: int) -> float:
    """1/sqrt(head_dim), times attention_scaling^2 where HF scales cos and sin (yarn, longrope)."""
    return table.attention_scaling**2 / head_dim**0.5


def bind_rope(model: nn.Module) -> RopeTable:
    """Point every swapped layer of `model` at one RopeTable over the model's own rotary module."""
    base = getattr(model, "model", model)
    table = RopeTable(base.get_submodule("rotary_emb"))
    layers: nn.ModuleList = base.get_submodule("layers")  # type: ignore[assignment]
    for layer in layers:
        if hasattr(layer, "rope"):
            layer.rope = table  # type: ignore[assignment]
    return table

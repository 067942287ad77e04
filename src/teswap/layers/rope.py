"""One RoPE table per model (per layer type, where a family has several), from the HF model's own rotary module.

TE's example builds a max_position_embeddings-long table per layer with TE's default base 10000,
ignoring rope_theta and rope scaling. Here the frequencies come from the HF rotary module's
`inv_freq` (which already folds in rope_theta and llama3/yarn/linear/longrope scaling; Gemma3 keeps
one per layer type, `{layer_type}_inv_freq`) at the positions actually used, in fp32, in TE's layout
[s, 1, 1, d], read at every forward (longrope swaps its factors at run time). A partial rotary
(Phi-3) has a shorter inv_freq: the freqs cover the rotated channels only. TE's freqs cannot carry HF's
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
from teswap.layers.plan import LayerPlan


class RopeTable:
    """Shared by every swapped layer of one model that reads the same inv_freq; computes freqs once per forward."""

    def __init__(self, rotary_emb: nn.Module, buffer: str = "inv_freq", scaling_attr: str = "attention_scaling",
                 per_forward: dict[str, Any] | None = None) -> None:
        self.rotary_emb = rotary_emb  # the HF model's module (not registered: no state-dict entry)
        self.buffer, self.scaling_attr = buffer, scaling_attr
        self._cached: tuple[torch.Tensor, tuple[int, int, int | None], torch.Tensor] | None = None
        # What one forward's first layer works out for all layers of the model (the te backend's TEBatch);
        # shared by the model's tables of every layer type.
        self.per_forward: dict[str, Any] = {} if per_forward is None else per_forward

    @property
    def attention_scaling(self) -> float:
        return float(getattr(self.rotary_emb, self.scaling_attr, 1.0))

    def inv_freq(self) -> torch.Tensor:
        return self.rotary_emb.get_buffer(self.buffer)

    def freqs(self, position_ids: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
        """fp32 cat(f, f) at `position_ids`: [s, 1, 1, d] for [s] or [1, s] (TE's layout), [s, b, 1, d] for [b, s].

        No position_ids means 0..s-1. Rows are never compared (that would be a host sync): a [b, s]
        tensor gets per-row freqs, which equal the shared table when the rows are equal.
        """
        inv_freq = self.inv_freq()
        if torch.compiler.is_compiling():  # no Python-side cache in a traced graph
            return self._angles(self._positions(position_ids, seq_len, device), inv_freq)
        # Dynamic rope rewrites inv_freq in place, longrope replaces the buffer; a decode loop may
        # advance one position tensor in place.
        version = (id(inv_freq), inv_freq._version, None if position_ids is None else position_ids._version)
        cached = self._cached
        if cached is not None and cached[0] is position_ids and cached[1] == version and position_ids is not None:
            return cached[2]
        result = self._angles(self._positions(position_ids, seq_len, device), inv_freq)
        if position_ids is not None:  # holding the tensor keeps its id from being reused
            self._cached = (position_ids, version, result)
        return result

    def table(self, length: int, device: torch.device) -> torch.Tensor:
        """fp32 [length, 1, 1, d] at positions 0..length-1: TE's table, which TE indexes per row itself."""
        return self._angles(torch.arange(length, device=device, dtype=torch.float32)[:, None], self.inv_freq())

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


_TABLES_BY_CONFIG: dict[tuple[int, str], RopeTable] = {}


def shared_table_for(config, plan: LayerPlan) -> RopeTable:
    """One table per config object and layer type, over a rotary module built from it as the HF model
    builds its own (the family's rotary class).

    Layers built by `replace_decoder` alone (TE's example pattern) use this until `bind_rope` points
    them at the model's own rotary module; either way the layers of a model share its tables.
    """
    key = (id(config), plan.rope_buffer)
    table = _TABLES_BY_CONFIG.get(key)
    if table is None:
        # transformers builds models for from_pretrained on the meta device; a meta inv_freq could never
        # be read, so a table made then lives on the CPU until `bind_rope` replaces it.
        on_meta = torch.get_default_device().type == "meta"
        with torch.device("cpu") if on_meta else contextlib.nullcontext():
            rotary = plan.rotary_factory(config)
        siblings = [t for (cid, _), t in _TABLES_BY_CONFIG.items() if cid == id(config)]
        table = RopeTable(rotary, plan.rope_buffer, plan.rope_scaling_attr,
                          per_forward=siblings[0].per_forward if siblings else None)
        _TABLES_BY_CONFIG[key] = table
        weakref.finalize(config, _TABLES_BY_CONFIG.pop, key, None)
    return table


def attention_softmax_scale(table: RopeTable, head_dim: int, query_scale: float | None = None) -> float:
    """The layer's softmax scale (1/sqrt(head_dim) unless the family says otherwise), times
    attention_scaling^2 where HF scales cos and sin (yarn, longrope)."""
    base = query_scale if query_scale is not None else head_dim**-0.5
    return table.attention_scaling**2 * base


def base_model_of(model: nn.Module) -> nn.Module:
    """The module holding the decoder layers: `model.base_model` (`model`, or `transformer` for QA heads)."""
    return getattr(model, "base_model", model)


def bind_rope(model: nn.Module) -> RopeTable:
    """Point every swapped layer of `model` at the model's own rotary module, one table per inv_freq it reads."""
    base = base_model_of(model)
    rotary = base.get_submodule("rotary_emb")
    tables: dict[tuple[str, str], RopeTable] = {}
    shared: dict[str, Any] = {}
    layers: Any = base.get_submodule("layers")
    for layer in layers:
        if hasattr(layer, "rope"):
            plan: LayerPlan = layer.layer_plan_used
            key = (plan.rope_buffer, plan.rope_scaling_attr)
            if key not in tables:
                tables[key] = RopeTable(rotary, *key, per_forward=shared)
            layer.rope = tables[key]
    return next(iter(tables.values())) if tables else RopeTable(rotary, per_forward=shared)

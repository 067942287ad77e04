"""One HF model forward in TransformerEngine's terms (te backend): padding layout, TE mask, RoPE, KV cache.

TE's bshd attention with a padding mask type reads only each row's LENGTH: `get_cu_seqlens(mask)`
counts the unmasked tokens and the kernels take a row's first L tokens as real
(dot_product_attention/utils.py). HF pads on either side (generate() left-pads prompts), so each
row's real tokens are moved to the front before TE runs and back afterwards — what TE's te_gemma
example does ("padding is shifted to the end to match TE attention mask expectations"). Shapes stay
[b, s] (no data-dependent token count, unlike THD packing), and the layout matches TE's KV cache,
which holds each row's tokens contiguously from position 0.

Positions: TE's RoPE takes one freqs table; rows differ only through InferenceParams' per-row start
positions. So a padded batch needs HF's per-row position_ids to count on from each row's first real
token (what generate() passes), from one common start without a cache or from the tokens TE holds
with one. Whether the inputs fit is checked on the host, outside a traced graph only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from teswap.errors import UnsupportedInputError
from teswap.layers.hf_inputs import DecoderInputs
from teswap.layers.rope import RopeTable
from teswap.layers.te_cache import TEKVState, mark_unfilled, te_cache_for


@dataclass(frozen=True, kw_only=True)
class TEBatch:
    """TransformerLayer.forward's arguments for one model forward, and the layout round trip."""

    order: torch.Tensor | None  # [b, s] HF position of each TE position (real tokens first); None = as is
    inverse: torch.Tensor | None  # [b, s] TE position of each HF position
    attention_mask: torch.Tensor | None  # [b, 1, 1, s] True = padding (TE's convention), or None
    mask_type: str  # TE's self_attn_mask_type
    freqs: torch.Tensor  # TE's rotary_pos_emb, fp32 [n, 1, 1, d]
    inference_params: Any  # TE's InferenceParams, or None
    key: tuple[int, int, int]  # ids of the HF mask, position_ids and cache this was made for

    def to_te(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.order is None else _gather_rows(hidden_states, self.order)

    def from_te(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.inverse is None else _gather_rows(hidden_states, self.inverse)


def te_batch(te_module: Any, rope: RopeTable, config: Any, hidden_states: torch.Tensor,
             inputs: DecoderInputs) -> TEBatch:
    """TE's view of this forward; with a cache this also runs InferenceParams.pre_step (once per forward)."""
    if inputs.packed_cu_seqlens is not None:
        raise UnsupportedInputError("packed sequences (cu_seq_lens_q/k) are not supported by the te backend: its "
                                    "layers are built with attn_input_format='bshd', packed input needs 'thd'")
    batch, seq_len = hidden_states.shape[:2]
    device = hidden_states.device
    key = (id(inputs.attention_mask), id(inputs.position_ids), id(inputs.cache))
    real = _real_tokens(inputs.attention_mask, seq_len)
    positions = _positions(inputs.position_ids, batch, seq_len, device)
    state = None
    if inputs.cache is not None and torch.is_grad_enabled():  # TE's KV cache is inference-only
        mark_unfilled(inputs.cache)
    elif inputs.cache is not None:
        state = te_cache_for(inputs.cache, config)
    if state is None and real is None:  # TE's plain causal forward
        _require(positions == positions[:1], "rows of position_ids differ in an unpadded batch; TE's RoPE "
                                             "takes one table for all rows")
        return TEBatch(order=None, inverse=None, attention_mask=None, mask_type="causal",
                       freqs=rope.freqs(positions[:1], seq_len, device), inference_params=None, key=key)
    real = torch.ones(batch, seq_len, dtype=torch.bool, device=device) if real is None else real
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
    lengths = real.sum(dim=1)
    in_row = torch.arange(seq_len, device=device)
    real_first = in_row[None, :] < lengths[:, None]
    moved = torch.gather(positions, 1, order)
    if state is None:
        _require((moved == moved[:1, :1] + in_row) | ~real_first, _POSITIONS_WITHOUT_CACHE)
        return TEBatch(order=order, inverse=torch.argsort(order, dim=1), mask_type="padding_causal",
                       attention_mask=~real_first[:, None, None, :],
                       freqs=rope.freqs(moved[:1, :1] + in_row[None], seq_len, device), inference_params=None,
                       key=key)
    return _cached_batch(te_module, rope, state, hidden_states, order, lengths, moved, real_first, key)


def _cached_batch(te_module, rope, state: TEKVState, hidden_states, order, lengths, moved, real_first, key) -> TEBatch:
    """With TE's KV cache: per-row start positions come from InferenceParams, the table from position 0."""
    seq_len = hidden_states.shape[1]
    held = state.row_lengths(hidden_states.device)
    starts = held if held.numel() else torch.zeros_like(lengths)
    _require((moved == starts[:, None] + torch.arange(seq_len, device=moved.device)) | ~real_first,
             "with TE's KV cache each row's position_ids must count on from the tokens the row already holds "
             "(generate() passes them so); got other positions")
    params = state.pre_step(te_module, lengths.tolist(), hidden_states)
    # te_gemma's choice: "padding_causal" for the prompt, "padding" for one token per row (TE aligns the
    # causal diagonal bottom-right under KV caching, so both are the same for one query).
    return TEBatch(order=order, inverse=torch.argsort(order, dim=1), attention_mask=None,
                   mask_type="padding_causal" if seq_len > 1 else "padding",
                   freqs=rope.table(state.capacity, hidden_states.device), inference_params=params, key=key)


_POSITIONS_WITHOUT_CACHE = (
    "the te backend needs each row's positions to count on from its first real token, from one start shared "
    "by all rows (TE's RoPE takes one table): for a left-padded batch pass per-row position_ids "
    "(attention_mask.cumsum(-1) - 1), as generate() does")


def _real_tokens(mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
    """[b, s] bool: which of this forward's tokens are real, from HF's 4D mask; None when there is no mask.

    HF builds the mask as causal AND key padding, so the last query row sees every real key; outside a
    traced graph the whole mask is checked to be of that form (a packed block-diagonal one is not).
    """
    if mask is None:
        return None
    attend = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
    keys_real = attend[:, -1, :]
    queries, keys = attend.shape[-2:]
    causal = torch.ones(queries, keys, dtype=torch.bool, device=mask.device).tril(keys - queries)
    _require(attend == (causal[None] & keys_real[:, None, :]),
             "the te backend takes HF masks of the form causal AND padding (TE's padding_causal); this mask "
             "is not (packed sequences or a custom 4D mask)")
    return keys_real[:, -seq_len:]


def _positions(position_ids: torch.Tensor | None, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    if position_ids is None:
        return torch.arange(seq_len, device=device).expand(batch, seq_len)
    position_ids = position_ids if position_ids.dim() == 2 else position_ids[None]
    return position_ids.to(device).expand(batch, seq_len)


def _require(condition: torch.Tensor, message: str) -> None:
    """Raise UnsupportedInputError unless all of `condition`; skipped inside a traced graph (no host sync)."""
    if not torch.compiler.is_compiling() and not bool(condition.all()):
        raise UnsupportedInputError(message)


def _gather_rows(hidden_states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """hidden_states[b, index[b, i]] for bshd [b, s, h]."""
    return torch.gather(hidden_states, 1, index[:, :, None].expand(-1, -1, hidden_states.shape[-1]))

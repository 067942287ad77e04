"""One HF model forward in TransformerEngine's terms (te backend): padding layout, TE mask, RoPE, KV cache.

TE's bshd attention with a padding mask type reads only each row's LENGTH: `get_cu_seqlens(mask)`
counts the unmasked tokens and the kernels take a row's first L tokens as real
(dot_product_attention/utils.py). HF pads on either side (generate() left-pads prompts), so each
row's real tokens are moved to the front before TE runs and back afterwards — what TE's te_gemma
example does ("padding is shifted to the end to match TE attention mask expectations"). Shapes stay
[b, s] (no data-dependent token count, unlike THD packing), and the layout matches TE's KV cache,
which holds each row's tokens contiguously from position 0.

Sliding-window layers (TE's window_size) see HF's sliding mask, causal AND window AND padding; the
first layer of a forward works out the padding layout from its own mask, and every later layer checks
that its mask has the form its window says (a family mixing sliding and full layers hands each its
own mask).

Positions: TE's RoPE takes one freqs table; rows differ only through InferenceParams' per-row start
positions. So a padded batch needs HF's per-row position_ids to count on from each row's first real
token (what generate() passes), from one common start without a cache or from the tokens TE holds
with one. Whether the inputs fit is checked on the host, outside a traced graph only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    rope_positions: torch.Tensor | None  # positions of TE's freqs table, [1, s]; None: 0..table_length-1
    table_length: int  # rows of TE's freqs table when rope_positions is None (the KV cache's capacity)
    inference_params: Any  # TE's InferenceParams, or None
    key: tuple[int, int]  # ids of the position_ids and cache this was made for
    real: torch.Tensor | None  # [b, s] which tokens of this forward are real (HF order); None: all
    seq_len: int = 0
    freqs: dict[int, torch.Tensor] = field(default_factory=dict)  # per RopeTable (layer type), made once

    def freqs_for(self, rope: RopeTable) -> torch.Tensor:
        """TE's rotary_pos_emb (fp32 [n, 1, 1, d]) from the layer's table, once per table and forward."""
        if id(rope) not in self.freqs:
            if self.rope_positions is None:
                self.freqs[id(rope)] = rope.table(self.table_length, rope.inv_freq().device)
            else:
                positions = self.rope_positions
                self.freqs[id(rope)] = rope.freqs(positions, positions.shape[-1], positions.device)
        return self.freqs[id(rope)]

    def check_mask(self, mask: torch.Tensor | None, window: tuple[int, int] | None) -> None:
        """A later layer's HF mask must be of the form its window says, over the same real tokens."""
        if torch.compiler.is_compiling():
            return
        theirs = _real_tokens(mask, self.seq_len, window)
        known = theirs if theirs is not None else self.real
        if known is None:
            return
        everyone = torch.ones_like(known)
        if not torch.equal(everyone if theirs is None else theirs, everyone if self.real is None else self.real):
            raise UnsupportedInputError("the decoder layers of one forward got masks with different padding")

    def to_te(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.order is None else _gather_rows(hidden_states, self.order)

    def from_te(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states if self.inverse is None else _gather_rows(hidden_states, self.inverse)


def te_batch(te_module: Any, config: Any, hidden_states: torch.Tensor, inputs: DecoderInputs, *,
             window: tuple[int, int] | None = None) -> TEBatch:
    """TE's view of this forward; with a cache this also runs InferenceParams.pre_step (once per forward).

    `window` is the first layer's (its HF mask is causal AND that window AND padding)."""
    if inputs.packed_cu_seqlens is not None:
        raise UnsupportedInputError("packed sequences (cu_seq_lens_q/k) are not supported by the te backend: its "
                                    "layers are built with attn_input_format='bshd', packed input needs 'thd'")
    batch, seq_len = hidden_states.shape[:2]
    device = hidden_states.device
    key = (id(inputs.position_ids), id(inputs.cache))
    real = _real_tokens(inputs.attention_mask, seq_len, window)
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
                       rope_positions=positions[:1], table_length=seq_len, inference_params=None, key=key, real=None,
                       seq_len=seq_len)
    found = real
    real = torch.ones(batch, seq_len, dtype=torch.bool, device=device) if real is None else real
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
    lengths = real.sum(dim=1)
    in_row = torch.arange(seq_len, device=device)
    real_first = in_row[None, :] < lengths[:, None]
    moved = torch.gather(positions, 1, order)
    if state is None:
        _require((moved == moved[:1, :1] + in_row) | ~real_first, _POSITIONS_WITHOUT_CACHE)
        return TEBatch(order=order, inverse=torch.argsort(order, dim=1), mask_type="padding_causal",
                       attention_mask=~real_first[:, None, None, :], rope_positions=moved[:1, :1] + in_row[None],
                       table_length=seq_len, inference_params=None, key=key, real=found, seq_len=seq_len)
    return _cached_batch(te_module, state, hidden_states, order, lengths, moved, real_first, key, found)


def _cached_batch(te_module, state: TEKVState, hidden_states, order, lengths, moved, real_first, key,
                  found) -> TEBatch:
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
                   mask_type="padding_causal" if seq_len > 1 else "padding", rope_positions=None,
                   table_length=state.capacity, inference_params=params, key=key, real=found,
                   seq_len=seq_len)


_POSITIONS_WITHOUT_CACHE = (
    "the te backend needs each row's positions to count on from its first real token, from one start shared "
    "by all rows (TE's RoPE takes one table): for a left-padded batch pass per-row position_ids "
    "(attention_mask.cumsum(-1) - 1), as generate() does")


def _real_tokens(mask: torch.Tensor | None, seq_len: int, window: tuple[int, int] | None) -> torch.Tensor | None:
    """[b, s] bool: which of this forward's tokens are real, from HF's 4D mask; None when there is no mask.

    HF builds the mask as causal AND key padding (AND the window on a sliding layer), so a real key is
    seen by some query (the one at its own position, at least); outside a traced graph the whole mask
    is checked to be of that form (a packed block-diagonal one is not).
    """
    if mask is None:
        return None
    attend = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
    keys_real = attend.any(dim=-2)
    queries, keys = attend.shape[-2:]
    allowed = torch.ones(queries, keys, dtype=torch.bool, device=mask.device).tril(keys - queries)
    if window is not None:
        allowed &= ~torch.ones_like(allowed).tril(keys - queries - window[0] - 1)
    _require(attend == (allowed[None] & keys_real[:, None, :]),
             "the te backend takes HF masks of the form causal AND padding (TE's padding_causal, with the "
             "layer's window_size on a sliding layer); this mask is not (packed sequences or a custom 4D mask)")
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

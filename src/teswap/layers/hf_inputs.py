"""HF's decoder-layer call, read once for both backends: what attention must honour, and what is refused.

LlamaModel hands every decoder layer its 4D mask, position_ids, the cache (`cache=` in transformers
5.24, `past_key_values=` in 5.17) and whatever reached the model's **kwargs: the Trainer's loss
kwargs, output flags, flash-attention packing. `decoder_inputs` sorts them into `DecoderInputs` and
raises UnsupportedInputError, naming the feature, for anything a TE-layout layer would otherwise
ignore silently. Every check here looks at shapes, types and flags only (no tensor values), so it
costs no host sync and traces under torch.compile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from teswap.errors import UnsupportedInputError

# Flash-attention packing (HF's DataCollatorWithFlattening): one row of several sequences.
PACKED_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# Reach the layers through LlamaModel's **kwargs but are none of a layer's business: the loss's
# arguments (the Trainer passes num_items_in_batch), outputs HF records with hooks at the model
# level, and arguments older transformers versions still pass.
PASSED_THROUGH = ("num_items_in_batch", "shift_labels", "ignore_index", "output_hidden_states", "return_dict",
                  "cache_position", "position_embeddings_local", "seq_idx")
# Flags a TE-layout layer cannot honour; False or None is fine.
REFUSED_FLAGS = {
    "output_attentions": "TransformerEngine never materialises attention probabilities (its fused kernels "
                         "do not form them), so neither do the swapped layers",
    "output_router_logits": "this family's swapped decoder layers have no router (it is no mixture-of-experts family)",
}


@dataclass(frozen=True, kw_only=True)
class DecoderInputs:
    """What one decoder-layer call asks attention to honour."""

    attention_mask: torch.Tensor | None  # HF's 4D mask: bool True = attend, or additive float; None = causal
    position_ids: torch.Tensor | None  # [1, s] or [b, s]; None = 0..s-1
    cache: Any  # HF Cache (or the te backend's TE-backed one), or None
    packed_cu_seqlens: torch.Tensor | None  # [n + 1] token offsets of sequences packed in one row


def decoder_inputs(hidden_states: torch.Tensor, *, attention_mask: torch.Tensor | None,
                   position_ids: torch.Tensor | None, cache: Any, past_key_values: Any,
                   kwargs: dict[str, Any], output_attentions_config: bool = False,
                   has_router: bool = False) -> DecoderInputs:
    """Sort an HF decoder call's arguments; raise UnsupportedInputError for what cannot be honoured.
    An MoE family's layers (`has_router`) take output_router_logits: HF records the router's output by a hook."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise UnsupportedInputError("the decoder layer got two different caches (cache= and past_key_values=)")
    cache = cache if cache is not None else past_key_values
    _check_mask(attention_mask, hidden_states.shape[1])
    if output_attentions_config and kwargs.get("output_attentions") is not False:
        raise UnsupportedInputError(f"output_attentions=True (set in the config) is not supported: "
                                    f"{REFUSED_FLAGS['output_attentions']}")
    packed = _packed_cu_seqlens(kwargs, hidden_states, cache)
    for name, value in kwargs.items():
        if name in PASSED_THROUGH or name in PACKED_KWARGS or (has_router and name == "output_router_logits"):
            continue
        if name in REFUSED_FLAGS:
            if value:
                raise UnsupportedInputError(f"{name}=True is not supported: {REFUSED_FLAGS[name]}")
        elif name == "is_causal":
            if value is False:
                raise UnsupportedInputError("is_causal=False (bidirectional attention) is not supported: "
                                            "the swapped layers are causal decoder layers")
        elif value is not None:
            raise UnsupportedInputError(f"the swapped decoder layer does not honour the argument {name}={value!r}")
    return DecoderInputs(attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         packed_cu_seqlens=packed)


def _check_mask(mask: torch.Tensor | None, seq_len: int) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise UnsupportedInputError(f"attention masks of type {type(mask).__name__} (flex attention's BlockMask) "
                                    "are not supported by the swapped layers; use attn_implementation='sdpa'")
    if mask.dim() != 4 or mask.shape[-2] != seq_len:
        raise UnsupportedInputError(
            f"the swapped decoder layer takes HF's prepared 4D mask [batch, 1, {seq_len}, keys]; got shape "
            f"{tuple(mask.shape)} (a 2D padding mask belongs to the model's forward, not the layer's)")


def _packed_cu_seqlens(kwargs: dict[str, Any], hidden_states: torch.Tensor, cache: Any) -> torch.Tensor | None:
    """cu_seq_lens of flash-attention packing, for self-attention over one packed row without a cache."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and cu_k is None:
        return None
    if cu_q is None or cu_k is None or cu_q.shape != cu_k.shape:
        raise UnsupportedInputError("packed sequences need cu_seq_lens_q and cu_seq_lens_k of the same sequences "
                                    "(self-attention)")
    if hidden_states.shape[0] != 1 or cache is not None:
        raise UnsupportedInputError("packed sequences (cu_seq_lens_q/k) must come as one row [1, tokens] "
                                    "and without a KV cache")
    if cu_q is not cu_k and not torch.compiler.is_compiling() and not torch.equal(cu_q, cu_k):
        raise UnsupportedInputError("cu_seq_lens_q differs from cu_seq_lens_k: cross-attention packing "
                                    "is not supported by the swapped layers")
    return cu_q


def packed_causal_mask(cu_seqlens: torch.Tensor, tokens: int) -> torch.Tensor:
    """[1, 1, t, t] bool (True = attend): causal within each packed sequence, nothing across them."""
    arange = torch.arange(tokens, device=cu_seqlens.device)
    sequence = torch.searchsorted(cu_seqlens[1:].to(arange.dtype), arange, right=True)
    same = sequence[:, None] == sequence[None, :]
    return (same & (arange[:, None] >= arange[None, :]))[None, None]


def cache_kwarg(forward: Any) -> str:
    """The name a model's forward takes its cache by: `cache` (transformers >= 5.2x) or `past_key_values` (5.17)."""
    import inspect

    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

"""The te backend's KV cache: TE's own `InferenceParams`, behind HF's `Cache` interface for generate().

TE keeps K/V itself (transformer_engine/pytorch/attention/inference.py, TE >= 2.2): one
`InferenceParams` for the model, its cache keyed by `layer_number`, each row's tokens contiguous from
position 0 ('bshd'); `pre_step({row: new_tokens})` once per model forward advances every row and sets
the per-row RoPE start positions; each layer's DotProductAttention calls `step()` to append its new
K/V. HF's generate() instead talks to a `Cache`: sequence length (the padded length it builds masks
and positions from), beam reordering, cropping. `TEKVCache` is an HF `Cache` whose per-layer entries
(`TECacheLayer`) answer those calls from one shared `TEKVState`, which owns the InferenceParams.

generate() makes a DynamicCache on its own; the te layers adopt it while it is still empty
(`te_cache_for`), replacing its per-layer entries with TE-backed ones, so plain
`model.generate(..., use_cache=True)` works. Pass `TEKVCache(config, max_sequence_length=N)` as the
cache for more than `DEFAULT_CAPACITY` tokens. Paged caches (TE's PagedKVCacheManager) are not used:
beam search must reorder rows, which TE's paged manager cannot (TE's te_mixtral example refuses it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers import Cache, DynamicCache, PretrainedConfig
from transformers.cache_utils import CacheLayerMixin

from teswap.errors import UnsupportedConfigError, UnsupportedInputError
from teswap.layers.hf_adapter import head_dim_of

DEFAULT_CAPACITY = 4096  # tokens per row TE allocates for, unless max_position_embeddings is smaller


class TEKVState:
    """One generation's TE InferenceParams, HF's padded length, and each row's length in TE's cache."""

    def __init__(self, config: PretrainedConfig, max_sequence_length: int | None = None) -> None:
        self.config = config
        self.capacity = max_sequence_length or min(config.max_position_embeddings, DEFAULT_CAPACITY)
        self.params: Any = None  # made by the first forward, when batch, dtype and device are known
        self.seen_tokens = 0  # HF's view: padded positions so far (masks and positions are built from it)

    def row_lengths(self, device: torch.device) -> torch.Tensor:
        """Tokens TE holds per row before this forward, [b] int64 (zeros before the first forward)."""
        if self.params is None:
            return torch.zeros(0, dtype=torch.int64, device=device)
        return torch.tensor(list(self.params.cache_manager.sequences.values()), dtype=torch.int64, device=device)

    def pre_step(self, te_module: Any, new_lengths: list[int], hidden_states: torch.Tensor) -> Any:
        """TE's pre_step for one model forward ({row: new real tokens}); HF's length grows by the input's.

        TE's cache managers add exactly one token to a sequence they already hold (NonPagedKVCacheManager
        .pre_step: `self.sequences[i] += 1`), so after the prompt every forward must bring one token per row.
        After `reset` (TE's InferenceParams.reset empties the rows and keeps the buffers) the next forward is
        a new prompt, of at most the batch the buffers were made for.
        """
        if self.params is None:
            self.params = self._make_params(te_module, len(new_lengths), hidden_states.dtype)
        elif self.params.cache_manager.sequences:  # a reset cache (no rows held) takes a new prompt
            held = list(self.params.cache_manager.sequences.values())
            if len(new_lengths) != len(held) or any(n != 1 for n in new_lengths):
                raise UnsupportedInputError(
                    f"TE's KV cache takes one new token per row after the prompt (got {new_lengths} for "
                    f"{len(held)} cached rows): multi-token steps (assisted decoding, chunked prefill) and "
                    "batch changes are not supported by the te backend")
            if max(held) + 1 > self.capacity:
                raise UnsupportedInputError(
                    f"a row would hold {max(held) + 1} tokens but TE's KV cache was allocated for "
                    f"{self.capacity}: pass cache=TEKVCache(config, max_sequence_length=N) "
                    "(past_key_values= on older transformers, e.g. 5.17) to generate()")
        if max(new_lengths) > self.capacity:
            raise UnsupportedInputError(f"the prompt has {max(new_lengths)} tokens but TE's KV cache was "
                                        f"allocated for {self.capacity}: pass TEKVCache(config, max_sequence_length=N)")
        self.params.pre_step(OrderedDict(enumerate(new_lengths)))
        self.seen_tokens += hidden_states.shape[1]
        return self.params

    def _make_params(self, te_module: Any, batch: int, dtype: torch.dtype) -> Any:
        if not hasattr(te_module.InferenceParams, "pre_step"):
            raise UnsupportedConfigError("this TransformerEngine's InferenceParams predates TE 2.2's KV-cache "
                                         "API (pre_step/step); the te backend's cached generation needs TE >= 2.2")
        heads_kv = self.config.num_key_value_heads or self.config.num_attention_heads
        return te_module.InferenceParams(
            max_batch_size=batch, max_sequence_length=self.capacity, num_heads_kv=heads_kv,
            head_dim_k=head_dim_of(self.config), dtype=dtype, is_paged=False, qkv_format="bshd",
        )

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Beam search: row i takes row beam_idx[i]'s cached tokens (TE's non-paged cache is [b, s, h, d])."""
        if self.params is None:
            return
        manager = self.params.cache_manager
        lengths = list(manager.sequences.values())
        manager.sequences = OrderedDict((row, lengths[int(src)]) for row, src in enumerate(beam_idx.tolist()))

    def reset(self) -> None:
        self.seen_tokens = 0
        if self.params is not None:
            self.params.reset()


class TECacheLayer(CacheLayerMixin):
    """HF's per-layer cache entry for one TE layer (`layer_number` = layer_idx + 1); K/V live in TE."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, state: TEKVState, layer_number: int) -> None:
        super().__init__()
        self.state, self.layer_number = state, layer_number

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise UnsupportedInputError("TE-backed cache entries are written by TE's attention, not Cache.update")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        raise UnsupportedInputError("TE-backed cache entries are written by TE's attention, not Cache.update")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.state.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.state.seen_tokens

    def get_max_length(self) -> int:
        return self.state.capacity

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        params = self.state.params
        if params is not None and self.layer_number in params.cache_manager.cache:
            keys, values = params.cache_manager.cache[self.layer_number]
            index = beam_idx.to(keys.device)
            params.cache_manager.cache[self.layer_number] = (keys.index_select(0, index),
                                                             values.index_select(0, index))
        if self.layer_number == 1:  # the shared row lengths move once
            self.state.reorder(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise UnsupportedInputError("cropping a TE KV cache (assisted decoding) is not supported: TE's cache "
                                        "managers only ever add one token per row")

    def reset(self) -> None:
        if self.layer_number == 1:
            self.state.reset()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise UnsupportedInputError("expanding a TE KV cache along the batch is not supported; expand the "
                                    "inputs before the first forward instead")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise UnsupportedInputError("selecting rows of a TE KV cache is not supported")


class TEKVCache(Cache):
    """An HF Cache whose K/V live in TransformerEngine's InferenceParams (te backend only)."""

    def __init__(self, config: PretrainedConfig, max_sequence_length: int | None = None) -> None:
        self.state = TEKVState(config, max_sequence_length)
        layers: list[Any] = te_cache_layers(self.state, config.num_hidden_layers)
        super().__init__(layers=layers)


def te_cache_layers(state: TEKVState, num_layers: int) -> list[TECacheLayer]:
    return [TECacheLayer(state, index + 1) for index in range(num_layers)]


def mark_unfilled(cache: Any) -> None:
    """A forward with gradients enabled (training) runs TE without its KV cache; the HF cache stays empty.

    LlamaModel makes a cache whenever config.use_cache is on, training included. The cache is marked
    so that decoding from it later is refused instead of starting from nothing.
    """
    layers = getattr(cache, "layers", None)
    if layers and isinstance(layers[0], TECacheLayer):
        raise UnsupportedInputError("TE's KV cache is inference-only (its K/V copies carry no gradient): run "
                                    "cached generation under torch.no_grad()")
    cache._teswap_unfilled = True


def te_cache_for(cache: Any, config: PretrainedConfig) -> TEKVState:
    """The TE state behind an HF cache handed to the te layers, adopting a fresh DynamicCache."""
    if getattr(cache, "_teswap_unfilled", False):
        raise UnsupportedInputError("this cache went through a te forward with gradients enabled, which runs "
                                    "without TE's KV cache and leaves it empty; decode with a fresh cache")
    layers = getattr(cache, "layers", None)
    if layers and isinstance(layers[0], TECacheLayer):
        return layers[0].state
    if type(cache) is DynamicCache and cache.get_seq_length() == 0:
        state = TEKVState(config)
        cache.layers = te_cache_layers(state, config.num_hidden_layers)  # type: ignore[assignment]
        cache.layer_class_to_replicate = None
        return state
    raise UnsupportedInputError(
        f"the te backend keeps K/V in TransformerEngine's own cache and cannot use a {type(cache).__name__} "
        "that already holds tokens or is static; use the default cache (or TEKVCache) for generate()")

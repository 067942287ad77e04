"""Parity of the behaviours HF code leans on: cached decoding and padded batches (plain metric dicts).

    decode_cache_parity     one model: logits of cached decoding vs an uncached forward over the same tokens
    decode_swapped_vs_stock cached decoding of the swapped model vs stock along stock's greedy tokens
    padded_batch_parity     one model: a padded batch vs each row alone, pad positions left out

Each returns the `logits_metrics` names (max_abs, robust_rel, kl_div, top1_agreement, ...) plus a few
of its own, so a parity case can put them beside its other metrics. Nothing here judges.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache

from teswap.parity.metrics import logits_metrics, token_match_rate


def cache_kwarg(model: nn.Module) -> str:
    """The forward's cache argument: `cache` (transformers >= 5.2x) or `past_key_values` (5.17)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def greedy_sequence(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Prompt plus `new_tokens` greedy tokens from generate() with its default (dynamic) KV cache."""
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,  # type: ignore[operator]
                          do_sample=False, use_cache=True, pad_token_id=0)


@torch.no_grad()
def cached_step_logits(model: nn.Module, sequence: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[b, n, vocab]: logits predicting tokens prompt_len.. of `sequence`, prefill then one token per step."""
    cache = DynamicCache(config=model.config)  # type: ignore[arg-type]  # a PreTrainedModel's config
    name = cache_kwarg(model)
    logits = [model(sequence[:, :prompt_len], use_cache=True, **{name: cache}).logits[:, -1]]
    for position in range(prompt_len, sequence.shape[1] - 1):
        logits.append(model(sequence[:, position:position + 1], use_cache=True, **{name: cache}).logits[:, -1])
    return torch.stack(logits, dim=1)


@torch.no_grad()
def uncached_logits(model: nn.Module, sequence: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """[b, n, vocab]: the same predictions from one forward over the whole sequence, without a cache."""
    return model(sequence[:, :-1], use_cache=False).logits[:, prompt_len - 1:]


def decode_cache_parity(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> dict[str, float]:
    """Cached vs uncached logits of one model along its own greedy continuation of `prompt`."""
    sequence = greedy_sequence(model, prompt, new_tokens)
    cached = cached_step_logits(model, sequence, prompt.shape[1])
    uncached = uncached_logits(model, sequence, prompt.shape[1])
    metrics = logits_metrics(cached, uncached).as_dict()
    metrics["greedy_equal"] = float(torch.equal(cached.argmax(-1), sequence[:, prompt.shape[1]:]))
    return metrics


def decode_swapped_vs_stock(stock: nn.Module, swapped: nn.Module, prompt: torch.Tensor,
                            new_tokens: int) -> dict[str, float]:
    """Swapped cached decoding against stock's: logits along stock's greedy tokens, and free-running tokens."""
    stock_sequence = greedy_sequence(stock, prompt, new_tokens)
    prompt_len = prompt.shape[1]
    metrics = logits_metrics(cached_step_logits(swapped, stock_sequence, prompt_len),
                             cached_step_logits(stock, stock_sequence, prompt_len)).as_dict()
    swapped_sequence = greedy_sequence(swapped, prompt, new_tokens)
    match = token_match_rate(swapped_sequence[:, prompt_len:], stock_sequence[:, prompt_len:])
    return metrics | match.as_dict()


def pad_rows(rows: Sequence[torch.Tensor], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """1D id rows -> (ids [b, s], attention_mask [b, s], position_ids counting from each row's first token)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(row.numel() for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        span = slice(width - row.numel(), width) if side == "left" else slice(0, row.numel())
        ids[index, span], mask[index, span] = row, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


@torch.no_grad()
def padded_batch_parity(model: nn.Module, rows: Sequence[torch.Tensor], *, pad_id: int = 0,
                        side: str = "left") -> dict[str, float]:
    """Logits of a padded batch of `rows` vs each row run alone, over the real (non-pad) positions."""
    ids, mask, positions = pad_rows(rows, pad_id, side)
    batched = model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    alone = torch.zeros_like(batched)
    real = mask.bool()
    for index, row in enumerate(rows):
        alone[index, real[index]] = model(row[None], use_cache=False).logits[0]
    metrics = logits_metrics(batched, alone, mask=real).as_dict()
    metrics["pad_fraction"] = 1.0 - real.double().mean().item()
    return metrics

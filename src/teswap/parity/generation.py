"""Greedy decoding for parity: how many of the reference's next tokens each model reproduces.

Each model continues the same prompts greedily with its KV cache for exactly `new_tokens` tokens (no
early stop at EOS); per prompt, the matched prefix is the number of tokens equal to the reference's
continuation before the first difference. After a difference the models decode from different
contexts, so later agreement is partly chance: the matched prefix is what is compared. A trained
model's greedy path flips on near-ties under bf16/FP8 noise, so it is judged over many prompts
(16 by default: also a multiple of 16 rows per decode step, which TE's FP8 GEMMs need).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from transformers import GenerationConfig

from teswap.parity.metrics import matched_prefix_lengths

Context = Callable[[], AbstractContextManager]


@torch.no_grad()
def greedy_continuations(model: nn.Module, prompts: torch.Tensor, new_tokens: int, context: Context) -> torch.Tensor:
    """[prompts, new_tokens] greedy continuation of unpadded equal-length `prompts`, cache on, no early stop."""
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              use_cache=True, eos_token_id=None, pad_token_id=0, bos_token_id=None)
    attention = torch.ones_like(prompts)
    with context():
        out = model.generate(  # type: ignore[operator]  # transformers' GenerationMixin
            prompts, attention_mask=attention, generation_config=config)
    return out[:, prompts.shape[1]:]


def matched_tokens(models: dict[str, nn.Module], contexts: dict[str, Context], expected: torch.Tensor,
                   prompts: torch.Tensor, new_tokens: int) -> dict[str, torch.Tensor]:
    """Per prompt, each model's matched prefix (tokens) against `expected`, the reference's greedy continuation."""
    return {name: matched_prefix_lengths(greedy_continuations(model, prompts, new_tokens, contexts[name]), expected)
            for name, model in models.items()}


def nullcontext_factory() -> AbstractContextManager:
    from contextlib import nullcontext

    return nullcontext()

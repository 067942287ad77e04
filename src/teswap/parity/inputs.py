"""What a parity case feeds the models: tokenized real text when the model has a tokenizer, else random ids.

Each case gets `batches` batches of [batch, seq_len] token ids for the logits, per-layer and gradient
checks, and `gen_prompts` prompts of PROMPT_TOKENS tokens for greedy decoding. Real text comes from
teswap.parity.corpus (the standard library's docstrings); random ids (a seeded uniform draw) are
only for presets without a tokenizer, and the record says which it was.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import torch

from teswap.parity.corpus import corpus_digest, prompts, text_batches

PROMPT_TOKENS = 16
# Prompts start at paragraphs after those the batches begin with, so decoding is not scored on
# text the batches already showed the model.
PROMPT_SKIP = 64


@dataclass(frozen=True, kw_only=True)
class CaseInputs:
    """Token ids for one parity case, on the case's device, and a line saying what they are."""

    batches: list[torch.Tensor]  # each [batch, seq_len]
    prompts: torch.Tensor  # [gen_prompts, PROMPT_TOKENS]
    description: str

    @property
    def tokens(self) -> int:
        return sum(b.numel() for b in self.batches)


def case_inputs(tokenizer: Any, *, vocab_size: int, batches: int, batch: int, seq_len: int, gen_prompts: int,
                seed: int, device: torch.device) -> CaseInputs:
    """Real text through `tokenizer` when there is one; otherwise seeded random ids below `vocab_size`."""
    if tokenizer is not None:
        chunks = text_batches(tokenizer, batches=batches, batch=batch, seq_len=seq_len)
        starts = prompts(tokenizer, count=gen_prompts, length=PROMPT_TOKENS, skip_tokens=PROMPT_SKIP) \
            if gen_prompts else torch.zeros(0, PROMPT_TOKENS, dtype=torch.long)
        description = (f"real text: Python {platform.python_version()} standard-library docstrings "
                       f"(corpus {corpus_digest()}), {type(tokenizer).__name__}")
    else:
        generator = torch.Generator().manual_seed(seed + 1)
        chunks = [torch.randint(0, vocab_size, (batch, seq_len), generator=generator) for _ in range(batches)]
        starts = torch.randint(0, vocab_size, (gen_prompts, PROMPT_TOKENS), generator=generator)
        description = f"random token ids (seed {seed + 1}): this source has no tokenizer"
    return CaseInputs(batches=[b.to(device) for b in chunks], prompts=starts.to(device), description=description)

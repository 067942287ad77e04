"""Parity that speaks MoE: does the swapped model route each token to the experts stock routes it to?

Beside the usual logits metrics, an MoE swap is judged on its routing (the main numeric risk of an
MoE model at low precision: a near-tie between two experts' probabilities flips with a small error):

    agreement          share of tokens (over every MoE layer) whose top-k expert SET equals stock's
    flips              tokens whose set differs (counted per layer, summed)
    tokens_per_expert  per MoE layer, how many tokens each expert got, stock and swapped
    aux_loss           HF's load-balancing loss (load_balancing_loss_func) from each model's router logits
    load_balance       max / mean tokens per expert of the swapped model (1.0 = perfectly even)

Both models are asked for output_router_logits; the top-k sets are derived from the logits as HF's
router does (softmax in fp32, top-k). Everything here is measured, on the backend that ran it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from teswap.families import family_for_config
from teswap.families.moe import MoEFamily


@dataclass(frozen=True, kw_only=True)
class RoutingReport:
    agreement: float
    flips: int
    tokens: int  # tokens x MoE layers compared
    layers: int
    tokens_per_expert_stock: list[list[int]]
    tokens_per_expert_swapped: list[list[int]]
    aux_loss_stock: float
    aux_loss_swapped: float
    load_balance: float

    def line(self) -> str:
        return (f"routing agreement {self.agreement:.2%} ({self.flips} flips of {self.tokens} token-layers, "
                f"{self.layers} MoE layers), aux loss stock {self.aux_loss_stock:.6f} swapped "
                f"{self.aux_loss_swapped:.6f}, load balance {self.load_balance:.2f}")


def top_k_sets(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Each token's top-k experts as HF's router picks them (fp32 softmax), sorted for set comparison."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.topk(probs, top_k, dim=-1).indices.sort(dim=-1).values


def routing_report(stock: PreTrainedModel, swapped: PreTrainedModel, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None,
                   contexts: Mapping[str, Callable[[], Any]] | None = None) -> RoutingReport:
    """Run both models once with output_router_logits (each inside its `contexts` entry, "stock" and
    "swapped": the case's precision) and compare their routing."""
    config = stock.config
    family = family_for_config(config)
    if not isinstance(family, MoEFamily):
        raise ValueError(f"{family.name} has no mixture-of-experts layers to compare routing on")
    top_k, experts = config.num_experts_per_tok, family.num_experts(config)
    contexts = contexts or {}
    with torch.no_grad(), contexts.get("swapped", nullcontext)():
        ours = swapped(input_ids, attention_mask=attention_mask, output_router_logits=True, use_cache=False)
    with torch.no_grad(), contexts.get("stock", nullcontext)():
        theirs = stock(input_ids, attention_mask=attention_mask, output_router_logits=True, use_cache=False)
    real = None if attention_mask is None else attention_mask.reshape(-1).bool()
    flips = tokens = 0
    counts_stock, counts_swapped = [], []
    for mine, reference in zip(ours.router_logits, theirs.router_logits, strict=True):
        a, b = top_k_sets(mine, top_k), top_k_sets(reference, top_k)
        if real is not None:
            a, b = a[real], b[real]
        flips += int((a != b).any(dim=-1).sum())
        tokens += a.shape[0]
        counts_swapped.append(torch.bincount(a.reshape(-1), minlength=experts).tolist())
        counts_stock.append(torch.bincount(b.reshape(-1), minlength=experts).tolist())
    loads = torch.tensor(counts_swapped, dtype=torch.float64)
    balance = float((loads.max(dim=-1).values / loads.mean(dim=-1)).max()) if loads.numel() else 1.0
    return RoutingReport(agreement=1.0 - flips / max(tokens, 1), flips=flips, tokens=tokens,
                         layers=len(counts_stock), tokens_per_expert_stock=counts_stock,
                         tokens_per_expert_swapped=counts_swapped, aux_loss_stock=float(theirs.aux_loss),
                         aux_loss_swapped=float(ours.aux_loss), load_balance=balance)

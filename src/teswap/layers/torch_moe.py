"""TE's MoE layer (te_mixtral's) in pure PyTorch: router, moe_permute / moe_unpermute, GroupedLinear experts.

An MoE decoder layer of a swapped model (teswap.layers.plan.MOE_COMPOSITE) is not a TransformerLayer
(TE's has a dense MLP only) but a composite, as TE's te_mixtral example and bionemo's Mixtral build it:

    self_attention              MultiheadAttention (input_layernorm fused into QKV; q/k norm where the family has it)
    post_attention_layernorm.weight    RMSNorm (HF's post_attention_layernorm)
    mlp                         the MoE block, one of two expert implementations (the plan's `experts`):
        "grouped"  TE's:  mlp.router.weight [E, H]                te.Linear (no bias)
                          mlp.experts_fc1.weight{e} [2I, H]       GroupedLinear(E, H, 2I): [gate; up] per expert
                          mlp.experts_fc2.weight{e} [H, I]        GroupedLinear(E, I, H)
        "hf"       HF's own sparse MoE block, kept as it is (mlp.gate.weight, mlp.experts.gate_up_proj,
                   mlp.experts.down_proj): the exact baseline, only attention and norms move to TE

A dense layer among MoE ones (Qwen3-MoE's mlp_only_layers, decoder_sparse_step) has the same norm and
a dense `mlp` of two te.Linear (mlp.fc1.weight [2I, H] = [gate; up], mlp.fc2.weight [H, I]): the norm
keeps one name in every layer (transformers renames checkpoint keys by name, not by layer), at the cost
of the norm's fusion into fc1 that LayerNormMLP would give those few layers.

Routing is HF's: logits in the input dtype (no FP8: TE's recipes are not applied to the router, as
Megatron keeps it high precision), softmax in fp32, top-k, renormalised where the plan says (Mixtral
always, Qwen3-MoE under norm_topk_prob), the top-k weights rounded to the input dtype where HF does
(Qwen3-MoE). Experts: tokens permuted by expert (TE's moe_permute, index map), one GEMM per expert
through its own GemmSite (TE's GroupedLinear keeps one FP8 scale per expert weight and input), the
gated activation, and moe_unpermute: each token's top-k expert outputs weighted by their probabilities
and summed in fp32, rounded once.

`Router` returns (logits, scores, indices) as HF's router does; HF records `router_logits` from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from teswap.layers.fused_kernels import gated_activation
from teswap.layers.plan import HF_EXPERTS, MoEPlan
from teswap.layers.torch_attention import KVUpdate
from teswap.layers.torch_layer import _attention, _check_fixed
from teswap.layers.torch_modules import TE_DEFAULT_INIT_STD, InitMethod, Linear, RMSNorm, normal_init
from teswap.precision.gemm import GemmSite

# The dtype the router's softmax runs in (HF's and Megatron's fp32; a mutation lowers it to bf16).
ROUTER_SOFTMAX_DTYPE = torch.float32


class Router(nn.Module):
    """TE's te.Linear router (weight [E, H], no bias) with HF's top-k routing."""

    def __init__(self, hidden_size: int, plan: MoEPlan, *, init_method: InitMethod | None = None) -> None:
        super().__init__()
        self.num_experts, self.top_k = plan.num_experts, plan.top_k
        self.renormalize, self.scores_in_input_dtype = plan.renormalize, plan.scores_in_input_dtype
        self.weight = nn.Parameter(torch.empty(plan.num_experts, hidden_size))
        (init_method or normal_init(TE_DEFAULT_INIT_STD))(self.weight)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flat = hidden_states.reshape(-1, self.weight.shape[1])
        logits = F.linear(flat, self.weight)
        return (logits, *route(logits, self.top_k, renormalize=self.renormalize,
                               scores_in_input_dtype=self.scores_in_input_dtype))


def route(logits: torch.Tensor, top_k: int, *, renormalize: bool, scores_in_input_dtype: bool
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k weights, top-k expert indices) from router logits [tokens, E], HF's way."""
    probs = torch.softmax(logits.to(ROUTER_SOFTMAX_DTYPE), dim=-1)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if scores_in_input_dtype:
        weights = weights.to(logits.dtype)
    return weights, indices


def moe_permute(tokens: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TE's moe_permute (index map): token rows copied once per top-k choice, grouped by expert (stable).

    Returns (permuted rows [tokens * k, H], row map [tokens * k]: the (token, choice) each row came from,
    flattened as token * k + choice)."""
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    return tokens[order // indices.shape[1]], order


def moe_unpermute(rows: torch.Tensor, row_map: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """TE's moe_unpermute: each token's k expert rows weighted by its probabilities, summed in fp32, rounded once."""
    tokens, k = probs.shape
    gathered = torch.empty_like(rows).index_copy_(0, row_map, rows).view(tokens, k, rows.shape[-1])
    weighted = gathered.float() * probs.float().unsqueeze(-1)
    return weighted.sum(dim=1).to(rows.dtype)


def tokens_per_expert(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1), minlength=num_experts)


class GroupedLinear(nn.Module):
    """TE's GroupedLinear(num_gemms, in, out, bias=False): weight{e} [out, in]; rows split by m_splits,
    one GEMM per group, each its own GemmSite (its own FP8 scales for weight and input)."""

    def __init__(self, num_gemms: int, in_features: int, out_features: int, *, name: str,
                 init_method: InitMethod | None = None) -> None:
        super().__init__()
        self.num_gemms = num_gemms
        init = init_method or normal_init(TE_DEFAULT_INIT_STD)
        for index in range(num_gemms):
            weight = nn.Parameter(torch.empty(out_features, in_features))
            init(weight)
            self.register_parameter(f"weight{index}", weight)
        self.gemms = [GemmSite(f"{name}[{index}]") for index in range(num_gemms)]

    def weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"weight{index}") for index in range(self.num_gemms)]

    def forward(self, inp: torch.Tensor, m_splits: list[int]) -> torch.Tensor:
        outs = []
        for gemm, weight, part in zip(self.gemms, self.weights(), inp.split(m_splits), strict=True):
            outs.append(gemm(part, weight) if part.shape[0] else part.new_empty(0, weight.shape[0]))
        return torch.cat(outs)


class GroupedExperts(nn.Module):
    """te_mixtral's MoE block: router, moe_permute, GroupedLinear fc1, gated activation, fc2, moe_unpermute."""

    def __init__(self, hidden_size: int, plan: MoEPlan, *, activation: str = "swiglu",
                 init_method: InitMethod | None = None, output_layer_init_method: InitMethod | None = None) -> None:
        super().__init__()
        self.plan, self.activation = plan, activation
        self.router = Router(hidden_size, plan, init_method=init_method)
        self.experts_fc1 = GroupedLinear(plan.num_experts, hidden_size, 2 * plan.ffn_hidden_size, name="experts_fc1",
                                         init_method=init_method)
        self.experts_fc2 = GroupedLinear(plan.num_experts, plan.ffn_hidden_size, hidden_size, name="experts_fc2",
                                         init_method=output_layer_init_method)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        _, scores, indices = self.router(flat)
        rows, row_map = moe_permute(flat, indices)
        if torch.compiler.is_compiling():  # m_splits are host ints (as TE's): a traced graph cannot read them
            return moe_unpermute(self._static_experts(rows, indices.reshape(-1)[row_map]), row_map, scores).view(shape)
        m_splits = tokens_per_expert(indices, self.plan.num_experts).tolist()  # TE's m_splits: host ints too
        hidden = self.experts_fc1(rows, m_splits)
        hidden = self.experts_fc2(gated_activation(hidden, self.activation).rounded, m_splits)
        return moe_unpermute(hidden, row_map, scores).view(shape)

    def _static_experts(self, rows: torch.Tensor, expert_of_row: torch.Tensor) -> torch.Tensor:
        """Every expert on every row, each row keeping its own expert's result: the same numbers with static
        shapes (E times the GEMM work), for torch.compile(fullgraph=True)."""
        out = rows.new_zeros(rows.shape[0], self.experts_fc2.weights()[0].shape[0])
        pairs = zip(self.experts_fc1.weights(), self.experts_fc2.weights(), strict=True)
        for index, (fc1, fc2) in enumerate(pairs):
            hidden = gated_activation(F.linear(rows, fc1), self.activation).rounded
            out = torch.where((expert_of_row == index).unsqueeze(-1), F.linear(hidden, fc2), out)
        return out


class DenseMLP(nn.Module):
    """A dense layer's MLP among MoE ones: te.Linear fc1 ([gate; up]), the gated activation, te.Linear fc2."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, *, activation: str = "swiglu",
                 init_method: InitMethod | None = None, output_layer_init_method: InitMethod | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.fc1 = Linear(hidden_size, 2 * ffn_hidden_size, gemm_name="fc1", init_method=init_method)
        self.fc2 = Linear(ffn_hidden_size, hidden_size, gemm_name="fc2", init_method=output_layer_init_method)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(gated_activation(self.fc1(hidden_states), self.activation).rounded)


def moe_block(hidden_size: int, plan: MoEPlan, **kwargs: Any) -> nn.Module:
    """The plan's expert implementation: HF's own block (as it is) or TE's grouped experts."""
    if plan.experts == HF_EXPERTS:
        if plan.hf_block is None:
            raise ValueError("an HF-experts MoE plan needs the family's HF block")
        return plan.hf_block()
    return GroupedExperts(hidden_size, plan, **kwargs)


class MoEComposite(nn.Module):
    """MultiheadAttention + RMSNorm + an MoE block (a dense MLP on a dense layer): not a TransformerLayer."""

    def __init__(self, *, fuse_qkv_params: bool = False, softmax_scale: float | None = None,
                 moe: MoEPlan | None = None, **te_kwargs: Any) -> None:
        super().__init__()
        _check_fixed(te_kwargs)
        self.layer_number = te_kwargs.get("layer_number") or 1
        self.self_attention = _attention(te_kwargs, fuse_qkv_params, softmax_scale)
        self.moe_plan = moe
        hidden = te_kwargs["hidden_size"]
        inits = {"activation": te_kwargs.get("activation", "swiglu"), "init_method": te_kwargs.get("init_method"),
                 "output_layer_init_method": te_kwargs.get("output_layer_init_method")}
        self.post_attention_layernorm = RMSNorm(hidden, eps=te_kwargs["layernorm_epsilon"])
        self.mlp = DenseMLP(hidden, te_kwargs["ffn_hidden_size"], **inits) if moe is None else moe_block(
            hidden, moe, **inits)

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor,
                attention_mask: torch.Tensor | None = None, kv_update: KVUpdate | None = None, *,
                own_window: bool = True) -> torch.Tensor:
        attention = self.self_attention(hidden_states, rotary_pos_emb, attention_mask, kv_update,
                                        own_window=own_window)
        hidden_states = hidden_states + attention
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))

"""The vocabulary of an HF <-> TE weight mapping: one Rule per group of tensors of a decoder layer.

A family's adapter lists its rules (names relative to a layer, e.g. `self_attn.q_proj.weight`); the
mapping engine (teswap.swap.mapping) and checkpoint loading under the swap (teswap.swap.loading)
apply them. Each rule is exact both ways except `unit_offset`, whose inverse in floating point can lose
the low bits of a small w (1 + w - 1 != w), which is why teswap proves weights equal in TE's layout.

    rename        one tensor, new name
    concat_rows   [a; b] row blocks -> one tensor (gate and up -> fc1; back: split by the same sizes)
    split_rows    one tensor -> row blocks (Phi-3's fused qkv_proj -> query/key/value)
    fuse_qkv      q, k, v -> TE's group-interleaved fused QKV (qkv_weight_interleaved=True)
    unit_offset   TE holds 1 + w where HF holds w (Gemma3's q/k norms: TE's q/k RMSNorm has no
                  zero-centred gamma); a gradient maps unchanged
    split_experts one [E, rows, cols] expert tensor -> E tensors [rows, cols] (HF's 3-D experts -> TE's
                  GroupedLinear weight0..weight{E-1}); back: stacked
    te_only_zero  a tensor only the TE layout has (a bias TE's bias=True adds that HF lacks), held at
                  zero and frozen; mapping back requires it to be zero still
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """HF tensors `hf` <-> TE tensors `te` (names relative to a decoder layer)."""

    kind: str
    hf: tuple[str, ...]
    te: tuple[str, ...]
    to_te: Callable[[Tensors], Tensors]
    to_hf: Callable[[Tensors], Tensors]
    offset: float = 0.0  # TE value = HF value + offset (a gradient maps without it)

    def grads_to_hf(self, grads: Tensors) -> Tensors:
        """Gradients with respect to the TE tensors, as gradients with respect to the HF ones."""
        if self.offset:
            return list(grads)  # d/dw of (w + c) is 1
        return self.to_hf(grads)


def rename(hf: str, te: str) -> Rule:
    return Rule("rename", (hf,), (te,), list, list)


def concat_rows(hf: Sequence[str], te: str, *, rows: Sequence[int] | None = None) -> Rule:
    """[hf[0]; hf[1]; ...] -> te; back by `rows` (equal blocks when None)."""
    parts = len(hf)

    def back(tensors: Tensors) -> Tensors:
        (whole,) = tensors
        return list(whole.split(list(rows), dim=0) if rows else whole.chunk(parts, dim=0))

    return Rule("concat_rows", tuple(hf), (te,), lambda tensors: [torch.cat(tensors, dim=0)], back)


def split_rows(hf: str, te: Sequence[str], *, rows: Sequence[int]) -> Rule:
    """hf -> row blocks of `rows` named te; back by concatenation."""
    return Rule("split_rows", (hf,), tuple(te), lambda tensors: list(tensors[0].split(list(rows), dim=0)),
                lambda tensors: [torch.cat(tensors, dim=0)])


def fuse_qkv_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, groups: int, head_dim: int) -> torch.Tensor:
    """[q; k; v] row blocks (weights [rows, in] or biases [rows]) -> TE's group-interleaved fused QKV.

    TE's MultiheadAttention (qkv_weight_interleaved=True) views the GEMM output as [..., groups,
    heads/groups + 2, head_dim] and splits the second-to-last axis into q, k, v: rows run group by
    group, that group's query heads, its key head, its value head.
    """
    tail = q.shape[1:]
    qg = q.reshape(groups, -1, head_dim, *tail)
    kg = k.reshape(groups, 1, head_dim, *tail)
    vg = v.reshape(groups, 1, head_dim, *tail)
    return torch.cat((qg, kg, vg), dim=1).reshape(-1, *tail)


def unfuse_qkv_rows(fused: torch.Tensor, *, heads: int, groups: int, head_dim: int) -> Tensors:
    """TE's group-interleaved fused QKV -> [q, k, v] row blocks."""
    tail = fused.shape[1:]
    grouped = fused.reshape(groups, heads // groups + 2, head_dim, *tail)
    q, k, v = grouped.split([heads // groups, 1, 1], dim=1)
    return [q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)]


def fuse_qkv(hf: Sequence[str], te: str, *, heads: int, groups: int, head_dim: int) -> Rule:
    return Rule("fuse_qkv", tuple(hf), (te,),
                lambda t: [fuse_qkv_rows(*t, groups=groups, head_dim=head_dim)],
                lambda t: unfuse_qkv_rows(t[0], heads=heads, groups=groups, head_dim=head_dim))


def unit_offset(hf: str, te: str) -> Rule:
    """TE = 1 + HF, computed in fp32 and rounded once to the tensor's dtype (as HF's 1.0 + w.float())."""
    def plus_one(tensors: Tensors) -> Tensors:
        return [(tensors[0].float() + 1.0).to(tensors[0].dtype)]

    def minus_one(tensors: Tensors) -> Tensors:
        return [(tensors[0].float() - 1.0).to(tensors[0].dtype)]

    return Rule("unit_offset", (hf,), (te,), plus_one, minus_one, offset=1.0)


def split_experts(hf: str, te: Sequence[str]) -> Rule:
    """hf [E, rows, cols] -> E tensors named te (one per expert, in expert order); back by stacking."""
    return Rule("split_experts", (hf,), tuple(te), lambda tensors: list(tensors[0].unbind(0)),
                lambda tensors: [torch.stack(tensors, dim=0)])


def te_only_zero(te: str) -> Rule:
    """A TE tensor with no HF counterpart, zero and frozen; mapping back drops it (it must still be zero)."""
    def none_in_hf(tensors: Tensors) -> Tensors:
        return []

    return Rule("te_only_zero", (), (te,), lambda tensors: [], none_in_hf)


def hf_keys(rules: Sequence[Rule]) -> frozenset[str]:
    return frozenset(key for rule in rules for key in rule.hf)


def te_keys(rules: Sequence[Rule]) -> frozenset[str]:
    return frozenset(key for rule in rules for key in rule.te)

"""TE's MultiheadAttention in pure PyTorch: fused-norm QKV GEMM, q/k norm, RoPE, windowed causal GQA, proj.

Parameter names as TE's (`self_attention.` inside a TransformerLayer):

    layernorm_qkv.{layer_norm_weight, query_weight, key_weight, value_weight}   (fused: .weight)
    layernorm_qkv.{query_bias, key_bias, value_bias}                             (fused: .bias; bias=True)
    q_norm.weight, k_norm.weight                                                 (qk_norm_type="RMSNorm")
    proj.weight, proj.bias

The fused QKV weight is group-interleaved ([q heads of a group, its k, its v] per group) with
`qkv_weight_interleaved=True`, TE's default, else [q; k; v] in blocks. RoPE rotates as many leading
channels as the freqs have (partial rotary) in fp32. A window (TE's `window_size=(left, 0)`) lets
query i see keys i - left .. i, counted in the key index space of the forward (the keys HF's dynamic
caches return end at the last query); HF's 4D mask only says which keys are real there, so the window
is the layer's own, as in TE, not HF's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from teswap.layers.torch_modules import LayerNormLinear, Linear, RMSNorm

# (new keys, new values) as [b, heads, s, d] -> every cached key and value, same layout (HF's Cache.update)
KVUpdate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """TE computes norms and RoPE in fp32; an fp64 reference run keeps fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Non-interleaved RoPE on bshd `t` from fp32 freqs [s, 1, 1, d] (TE's) or [s, b, 1, d] (per row), in fp32.

    Channels past the freqs' d pass through unrotated (partial rotary, as TE's fused RoPE does).
    """
    compute = _compute_dtype(t)
    cos, sin = _cos_sin(freqs, compute)
    rotary = freqs.shape[-1]
    tf = t[..., :rotary].to(compute)
    rotated = (tf * cos + rotate_half(tf) * sin).to(t.dtype)
    return rotated if rotary == t.shape[-1] else torch.cat((rotated, t[..., rotary:]), dim=-1)


def _cos_sin(freqs: torch.Tensor, compute: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of fp32 freqs as [1|b, s, 1, d] (bshd), computed once per table, not per layer and q/k.

    Kept on the freqs tensor itself, so they live exactly as long as the one shared table does; a
    traced forward (torch.compile, export) computes them in the graph instead.
    """
    tracing = torch.compiler.is_compiling()
    cached = None if tracing else getattr(freqs, "_teswap_cos_sin", None)
    if cached is not None and cached[0] == compute:
        return cached[1], cached[2]
    angles = freqs.transpose(0, 1)  # [1|b, s, 1, d] broadcasts over batch (or is per row) and heads
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)  # sincos in fp32, as TE's kernel
    if not tracing:
        freqs._teswap_cos_sin = (compute, cos, sin)  # type: ignore[attr-defined]
    return cos, sin


def windowed_mask(mask: torch.Tensor | None, queries: int, keys: int, left: int) -> torch.Tensor:
    """[b|1, 1, q, k] bool (True = attend): causal within `left` keys back, and only keys HF's mask has real.

    Query i sits at key index i + keys - queries. A key is real when HF's mask lets any query see it
    (padding never is; a real key is seen at least by the query at its own position, or, from the
    cache, by a query it is within HF's window of).
    """
    device = mask.device if mask is not None else None
    query_at = torch.arange(queries, device=device)[:, None] + (keys - queries)
    key_at = torch.arange(keys, device=device)[None, :]
    allowed = ((key_at <= query_at) & (key_at >= query_at - left))[None, None]
    if mask is None:
        return allowed
    attend = mask if mask.dtype == torch.bool else mask == 0
    return allowed & attend.any(dim=-2, keepdim=True)


def _sdpa_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """HF's 4D mask as SDPA takes it: bool (True = attend) as is, an additive float mask in the query dtype."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    return mask.to(dtype)


class MultiheadAttention(nn.Module):
    """TE-layout self-attention: fused-norm QKV GEMM, q/k RMSNorm, RoPE, causal GQA SDPA, output projection."""

    def __init__(self, *, hidden_size: int, num_attention_heads: int, num_gqa_groups: int, kv_channels: int,
                 eps: float, fuse_qkv_params: bool, qkv_weight_interleaved: bool, attention_dropout: float,
                 softmax_scale: float | None, zero_centered_gamma: bool, bias: bool,
                 window_size: tuple[int, int] | None, qk_norm_type: str | None, qk_norm_eps: float,
                 qk_norm_before_rope: bool, init_method, output_layer_init_method) -> None:
        super().__init__()
        if num_attention_heads % num_gqa_groups:
            raise ValueError(f"{num_attention_heads} heads do not split into {num_gqa_groups} groups")
        if qk_norm_type not in (None, "RMSNorm"):
            raise ValueError(f"the twin implements qk_norm_type=None or 'RMSNorm', not {qk_norm_type!r}")
        if window_size is not None and window_size[1] != 0:
            raise ValueError(f"the twin's windows are causal (window_size=(left, 0)), not {window_size}")
        self.heads, self.groups, self.head_dim = num_attention_heads, num_gqa_groups, kv_channels
        self.fused, self.interleaved = fuse_qkv_params, qkv_weight_interleaved
        self.attention_dropout = attention_dropout
        self.softmax_scale = softmax_scale if softmax_scale is not None else kv_channels**-0.5
        self.window_size = window_size
        self.qk_norm_before_rope = qk_norm_before_rope
        q_rows, kv_rows = num_attention_heads * kv_channels, num_gqa_groups * kv_channels
        self.layernorm_qkv = LayerNormLinear(
            hidden_size, {"query": q_rows, "key": kv_rows, "value": kv_rows}, eps=eps, fused=fuse_qkv_params,
            zero_centered_gamma=zero_centered_gamma, gemm_name="qkv", bias=bias, init_method=init_method,
        )
        # TE's q/k RMSNorm: one head_dim weight each, no zero-centred gamma
        self.q_norm: RMSNorm | None = RMSNorm(kv_channels, eps=qk_norm_eps) if qk_norm_type else None
        self.k_norm: RMSNorm | None = RMSNorm(kv_channels, eps=qk_norm_eps) if qk_norm_type else None
        self.proj = Linear(q_rows, hidden_size, gemm_name="proj", bias=bias, init_method=output_layer_init_method)

    def split_qkv(self, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split the QKV GEMM output into bshd q, k, v as TE's MultiheadAttention does."""
        b, s, _ = mixed.shape
        if self.fused and self.interleaved:  # per group: [q_g0 .. q_g(n-1), k_g, v_g]
            per_group = self.heads // self.groups
            grouped = mixed.view(b, s, self.groups, per_group + 2, self.head_dim)
            q, k, v = grouped.split([per_group, 1, 1], dim=3)
            return q.reshape(b, s, self.heads, self.head_dim), k.squeeze(3), v.squeeze(3)
        q_rows, kv_rows = self.heads * self.head_dim, self.groups * self.head_dim
        q, k, v = mixed.split([q_rows, kv_rows, kv_rows], dim=-1)
        return (q.view(b, s, self.heads, self.head_dim), k.view(b, s, self.groups, self.head_dim),
                v.view(b, s, self.groups, self.head_dim))

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.q_norm is None or self.k_norm is None:
            return q, k
        return self.q_norm(q), self.k_norm(k)

    def forward(self, x: torch.Tensor, rotary_pos_emb: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_update: KVUpdate | None = None, *, own_window: bool = True) -> torch.Tensor:
        """Self-attention of bshd `x`; `attention_mask` HF's 4D mask (None = causal), `kv_update` a KV cache.

        `own_window=False` leaves the window to HF's mask (a static cache, whose key slots do not end at
        the query).
        """
        b, s, _ = x.shape
        q, k, v = self.split_qkv(self.layernorm_qkv(x))
        if self.qk_norm_before_rope:
            q, k = self._qk_norm(q, k)
        # RoPE gives q and k their own storage; a contiguous v lets the whole QKV output be freed
        # before attention instead of living on as v's base (stock's v_proj output is v-sized).
        q, k, v = apply_rotary(q, rotary_pos_emb), apply_rotary(k, rotary_pos_emb), v.contiguous()
        if not self.qk_norm_before_rope:
            q, k = self._qk_norm(q, k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_update is not None:
            k, v = kv_update(k, v)
        mask = attention_mask
        if self.window_size is not None and own_window and k.shape[2] > self.window_size[0] + 1:
            mask = windowed_mask(attention_mask, s, k.shape[2], self.window_size[0])
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_sdpa_mask(mask, q.dtype),
            dropout_p=self.attention_dropout if self.training else 0.0,
            # As HF's sdpa path: without a mask, causal (top-left) for a block of queries, none for one query.
            is_causal=mask is None and s > 1, scale=self.softmax_scale, enable_gqa=self.groups != self.heads,
        )
        return self.proj(context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


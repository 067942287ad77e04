"""A pure-PyTorch TE-layout transformer layer: TE's TransformerLayer math, on CPU or any GPU.

Module tree and parameter names match `transformer_engine.pytorch.TransformerLayer` built with
normalization="RMSNorm", activation="swiglu", bias=False:

    self_attention.layernorm_qkv.{layer_norm_weight, query_weight, key_weight, value_weight}
                                 (or .weight when fuse_qkv_params=True)
    self_attention.proj.weight
    layernorm_mlp.{layer_norm_weight, fc1_weight, fc2_weight}

so one HF<->TE mapping serves both backends. The math follows TE: RMSNorm fused ahead of the QKV and
fc1 GEMMs (computed in fp32), one QKV GEMM, RoPE from fp32 freqs, causal GQA attention, SwiGLU with
SiLU on the FIRST half of fc1's output, every GEMM through a `GemmSite`. Fresh GEMM weights come from
`init_method` (TE's name; TE's default is normal with std 0.023).

Beyond TE's plain causal forward, attention also takes what an HF decoder call carries: HF's 4D mask
(True = attend, or additive float), per-row RoPE freqs ([s, b, 1, d]) and a KV-cache update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from teswap.layers.fused_kernels import rms_norm_output, swiglu
from teswap.precision.gemm import GemmSite, NoopCat, fuse_in_place, is_view_chain

InitMethod = Callable[[torch.Tensor], object]
# (new keys, new values) as [b, heads, s, d] -> every cached key and value, same layout (HF's Cache.update)
KVUpdate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
TE_DEFAULT_INIT_STD = 0.023


def normal_init(std: float) -> InitMethod:
    """TE's init_method_normal: weights ~ N(0, std)."""
    return lambda weight: nn.init.normal_(weight, mean=0.0, std=std)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """TE computes norms and RoPE in fp32; an fp64 reference run keeps fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Non-interleaved RoPE on bshd `t` from fp32 freqs [s, 1, 1, d] (TE's) or [s, b, 1, d] (per row), in fp32."""
    compute = _compute_dtype(t)
    cos, sin = _cos_sin(freqs, compute)
    tf = t.to(compute)
    return (tf * cos + rotate_half(tf) * sin).to(t.dtype)


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


class LayerNormLinear(nn.Module):
    """RMSNorm then one GEMM; split parameters (query_/key_/value_weight) or one fused `weight`."""

    def __init__(self, hidden_size: int, splits: dict[str, int], *, eps: float, fused: bool,
                 zero_centered_gamma: bool, gemm_name: str, init_method: InitMethod | None = None) -> None:
        super().__init__()
        init_method = init_method or normal_init(TE_DEFAULT_INIT_STD)
        self.eps = eps
        self.zero_centered_gamma = zero_centered_gamma
        self.split_names = [f"{name}_weight" for name in splits] if not fused else []
        self.layer_norm_weight = nn.Parameter(torch.ones(hidden_size))
        total = sum(splits.values())
        if fused:
            self.weight = nn.Parameter(torch.empty(total, hidden_size))
            init_method(self.weight)
        else:
            for name, rows in splits.items():
                param = nn.Parameter(torch.empty(rows, hidden_size))
                init_method(param)
                self.register_parameter(f"{name}_weight", param)
        self._fused_buffer: torch.Tensor | None = None
        self.gemm = GemmSite(gemm_name)

    def gemm_weight(self) -> torch.Tensor:
        """The [out, in] weight of the one GEMM, without copying split parameters."""
        if not self.split_names:
            return self.weight
        parts = [getattr(self, name) for name in self.split_names]
        fused = self._fused_buffer
        if fused is None or not _still_fused(fused, parts):  # after .to(), load or re-assignment
            fused = self._fused_buffer = fuse_in_place(parts)
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in parts):
            return fused  # nothing to route gradients to
        return NoopCat.apply(fused, *parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = rms_norm_output(x, self.layer_norm_weight, self.eps, self.zero_centered_gamma)
        return self.gemm(normed, self.gemm_weight())  # under FP8 the norm's fused cast feeds the GEMM


def _still_fused(fused: torch.Tensor, parts: list[torch.Tensor]) -> bool:
    """Whether the split parameters are still views of `fused`. Data pointers cannot be read while
    torch.compile traces (a compiled decode step after an eager prefill): there device and dtype are
    checked, the pointers having been checked by the eager forward before."""
    if torch.compiler.is_compiling():
        return fused.device == parts[0].device and fused.dtype == parts[0].dtype
    return is_view_chain(fused, parts)


class Linear(nn.Module):
    """The attention output projection: one GEMM, TE's `proj` module."""

    def __init__(self, in_features: int, out_features: int, *, gemm_name: str, init_method: InitMethod) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        init_method(self.weight)
        self.gemm = GemmSite(gemm_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gemm(x, self.weight)


class LayerNormMLP(nn.Module):
    """RMSNorm, fc1 ([gate; up] rows), SwiGLU = silu(first half) * second half, fc2."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, *, eps: float, zero_centered_gamma: bool,
                 init_method: InitMethod | None = None, output_layer_init_method: InitMethod | None = None) -> None:
        super().__init__()
        init_method = init_method or normal_init(TE_DEFAULT_INIT_STD)
        output_layer_init_method = output_layer_init_method or normal_init(TE_DEFAULT_INIT_STD)
        self.eps = eps
        self.zero_centered_gamma = zero_centered_gamma
        self.layer_norm_weight = nn.Parameter(torch.ones(hidden_size))
        self.fc1_weight = nn.Parameter(torch.empty(2 * ffn_hidden_size, hidden_size))
        self.fc2_weight = nn.Parameter(torch.empty(hidden_size, ffn_hidden_size))
        init_method(self.fc1_weight)
        output_layer_init_method(self.fc2_weight)
        self.fc1 = GemmSite("fc1")
        self.fc2 = GemmSite("fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = rms_norm_output(x, self.layer_norm_weight, self.eps, self.zero_centered_gamma)
        return self.fc2(swiglu(self.fc1(normed, self.fc1_weight)), self.fc2_weight)


class MultiheadAttention(nn.Module):
    """TE-layout self-attention: fused-norm QKV GEMM, RoPE, causal GQA SDPA, output projection."""

    def __init__(self, *, hidden_size: int, num_attention_heads: int, num_gqa_groups: int, kv_channels: int,
                 eps: float, fuse_qkv_params: bool, attention_dropout: float, softmax_scale: float | None,
                 zero_centered_gamma: bool, init_method: InitMethod, output_layer_init_method: InitMethod) -> None:
        super().__init__()
        if num_attention_heads % num_gqa_groups:
            raise ValueError(f"{num_attention_heads} heads do not split into {num_gqa_groups} groups")
        self.heads, self.groups, self.head_dim = num_attention_heads, num_gqa_groups, kv_channels
        self.fused = fuse_qkv_params
        self.attention_dropout = attention_dropout
        self.softmax_scale = softmax_scale if softmax_scale is not None else kv_channels**-0.5
        q_rows, kv_rows = num_attention_heads * kv_channels, num_gqa_groups * kv_channels
        self.layernorm_qkv = LayerNormLinear(
            hidden_size, {"query": q_rows, "key": kv_rows, "value": kv_rows}, eps=eps, fused=fuse_qkv_params,
            zero_centered_gamma=zero_centered_gamma, gemm_name="qkv", init_method=init_method,
        )
        self.proj = Linear(q_rows, hidden_size, gemm_name="proj", init_method=output_layer_init_method)

    def split_qkv(self, mixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split the QKV GEMM output into bshd q, k, v as TE's MultiheadAttention does."""
        b, s, _ = mixed.shape
        if self.fused:  # interleaved per group: [q_g0 .. q_g(n-1), k_g, v_g] for each group g
            per_group = self.heads // self.groups
            grouped = mixed.view(b, s, self.groups, per_group + 2, self.head_dim)
            q, k, v = grouped.split([per_group, 1, 1], dim=3)
            return q.reshape(b, s, self.heads, self.head_dim), k.squeeze(3), v.squeeze(3)
        q_rows, kv_rows = self.heads * self.head_dim, self.groups * self.head_dim
        q, k, v = mixed.split([q_rows, kv_rows, kv_rows], dim=-1)
        return (q.view(b, s, self.heads, self.head_dim), k.view(b, s, self.groups, self.head_dim),
                v.view(b, s, self.groups, self.head_dim))

    def forward(self, x: torch.Tensor, rotary_pos_emb: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_update: KVUpdate | None = None) -> torch.Tensor:
        """Self-attention of bshd `x`; `attention_mask` as HF's 4D mask (None = causal), `kv_update` a KV cache."""
        b, s, _ = x.shape
        q, k, v = self.split_qkv(self.layernorm_qkv(x))
        # RoPE gives q and k their own storage; a contiguous v lets the whole QKV output be freed
        # before attention instead of living on as v's base (stock's v_proj output is v-sized).
        q, k, v = apply_rotary(q, rotary_pos_emb), apply_rotary(k, rotary_pos_emb), v.contiguous()
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_update is not None:
            k, v = kv_update(k, v)
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_sdpa_mask(attention_mask, q.dtype),
            dropout_p=self.attention_dropout if self.training else 0.0,
            # As HF's sdpa path: without a mask, causal (top-left) for a block of queries, none for one query.
            is_causal=attention_mask is None and s > 1, scale=self.softmax_scale, enable_gqa=self.groups != self.heads,
        )
        return self.proj(context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


def _sdpa_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """HF's 4D mask as SDPA takes it: bool (True = attend) as is, an additive float mask in the query dtype."""
    if mask is None or mask.dtype == torch.bool:
        return mask
    return mask.to(dtype)


class TransformerLayer(nn.Module):
    """Pre-norm decoder layer with TE's module tree: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, *, hidden_size: int, ffn_hidden_size: int, num_attention_heads: int, num_gqa_groups: int,
                 kv_channels: int, layernorm_epsilon: float, layer_number: int, fuse_qkv_params: bool = False,
                 attention_dropout: float = 0.0, softmax_scale: float | None = None,
                 zero_centered_gamma: bool = False, init_method: InitMethod | None = None,
                 output_layer_init_method: InitMethod | None = None) -> None:
        super().__init__()
        self.layer_number = layer_number
        init_method = init_method or normal_init(TE_DEFAULT_INIT_STD)
        output_layer_init_method = output_layer_init_method or normal_init(TE_DEFAULT_INIT_STD)
        self.self_attention = MultiheadAttention(
            hidden_size=hidden_size, num_attention_heads=num_attention_heads, num_gqa_groups=num_gqa_groups,
            kv_channels=kv_channels, eps=layernorm_epsilon, fuse_qkv_params=fuse_qkv_params,
            attention_dropout=attention_dropout, softmax_scale=softmax_scale,
            zero_centered_gamma=zero_centered_gamma, init_method=init_method,
            output_layer_init_method=output_layer_init_method,
        )
        self.layernorm_mlp = LayerNormMLP(
            hidden_size, ffn_hidden_size, eps=layernorm_epsilon, zero_centered_gamma=zero_centered_gamma,
            init_method=init_method, output_layer_init_method=output_layer_init_method,
        )

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb: torch.Tensor,
                attention_mask: torch.Tensor | None = None, kv_update: KVUpdate | None = None) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attention(hidden_states, rotary_pos_emb, attention_mask, kv_update)
        return hidden_states + self.layernorm_mlp(hidden_states)

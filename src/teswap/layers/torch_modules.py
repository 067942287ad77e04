"""TE's building blocks in pure PyTorch, with TE's parameter names: LayerNormLinear, Linear, LayerNormMLP, RMSNorm.

Norms are computed in fp32 and rounded once (TE's kernels), with a zero-centred gamma ((1 + w), TE's
`zero_centered_gamma`) where asked. Every GEMM goes through a `GemmSite`, so the FP8 recipe emulation
quantizes exactly the GEMMs TE runs in FP8. Biases (TE's `bias=True`) start at zero, as TE's do.
Fresh GEMM weights come from `init_method` (TE's name; TE's default is normal with std 0.023).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from teswap.layers.fused_kernels import gated_activation, rms_norm, rms_norm_output
from teswap.precision.gemm import GemmSite, NoopCat, fuse_in_place, is_view_chain

InitMethod = Callable[[torch.Tensor], object]
TE_DEFAULT_INIT_STD = 0.023


def normal_init(std: float) -> InitMethod:
    """TE's init_method_normal: weights ~ N(0, std)."""
    return lambda weight: nn.init.normal_(weight, mean=0.0, std=std)


def _zeros(rows: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(rows))


def _gamma(size: int, zero_centered: bool) -> nn.Parameter:
    """A norm's gamma as TE starts it: 0 when zero-centred (1 + 0 = 1), else 1."""
    return nn.Parameter(torch.zeros(size) if zero_centered else torch.ones(size))


def biased(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias


class RMSNorm(nn.Module):
    """TE's RMSNorm module: y = x / sqrt(mean(x^2) + eps) * gamma over the last dim, fp32, rounded once."""

    def __init__(self, hidden_size: int, *, eps: float, zero_centered_gamma: bool = False) -> None:
        super().__init__()
        self.eps, self.zero_centered_gamma = eps, zero_centered_gamma
        self.weight = _gamma(hidden_size, zero_centered_gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.zero_centered_gamma)


class LayerNormLinear(nn.Module):
    """RMSNorm then one GEMM; split parameters (query_/key_/value_weight) or one fused `weight` (and bias)."""

    def __init__(self, hidden_size: int, splits: dict[str, int], *, eps: float, fused: bool,
                 zero_centered_gamma: bool, gemm_name: str, bias: bool = False,
                 init_method: InitMethod | None = None) -> None:
        super().__init__()
        init_method = init_method or normal_init(TE_DEFAULT_INIT_STD)
        self.eps = eps
        self.zero_centered_gamma = zero_centered_gamma
        self.split_names = [f"{name}_weight" for name in splits] if not fused else []
        self.bias_names = [f"{name}_bias" for name in splits] if bias and not fused else []
        self.layer_norm_weight = _gamma(hidden_size, zero_centered_gamma)
        total = sum(splits.values())
        if fused:
            self.weight = nn.Parameter(torch.empty(total, hidden_size))
            init_method(self.weight)
            self.bias = _zeros(total) if bias else None
        else:
            for name, rows in splits.items():
                param = nn.Parameter(torch.empty(rows, hidden_size))
                init_method(param)
                self.register_parameter(f"{name}_weight", param)
                if bias:
                    self.register_parameter(f"{name}_bias", _zeros(rows))
            self.bias = None
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

    def gemm_bias(self) -> torch.Tensor | None:
        if not self.bias_names:
            return self.bias
        return torch.cat([getattr(self, name) for name in self.bias_names])  # a bias is small: a copy is fine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = rms_norm_output(x, self.layer_norm_weight, self.eps, self.zero_centered_gamma)
        return biased(self.gemm(normed, self.gemm_weight()), self.gemm_bias())  # FP8: the norm's cast feeds it


def _still_fused(fused: torch.Tensor, parts: list[torch.Tensor]) -> bool:
    """Whether the split parameters are still views of `fused`. Data pointers cannot be read while
    torch.compile traces (a compiled decode step after an eager prefill): there device and dtype are
    checked, the pointers having been checked by the eager forward before."""
    if torch.compiler.is_compiling():
        return fused.device == parts[0].device and fused.dtype == parts[0].dtype
    return is_view_chain(fused, parts)


class Linear(nn.Module):
    """The attention output projection: one GEMM (and TE's bias), TE's `proj` module."""

    def __init__(self, in_features: int, out_features: int, *, gemm_name: str, init_method: InitMethod | None = None,
                 bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        (init_method or normal_init(TE_DEFAULT_INIT_STD))(self.weight)
        self.bias = _zeros(out_features) if bias else None
        self.gemm = GemmSite(gemm_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return biased(self.gemm(x, self.weight), self.bias)


class LayerNormMLP(nn.Module):
    """RMSNorm, fc1 ([gate; up] rows), a gated activation (act(first half) * second half), fc2."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, *, eps: float, zero_centered_gamma: bool,
                 activation: str = "swiglu", bias: bool = False, init_method: InitMethod | None = None,
                 output_layer_init_method: InitMethod | None = None) -> None:
        super().__init__()
        init_method = init_method or normal_init(TE_DEFAULT_INIT_STD)
        output_layer_init_method = output_layer_init_method or normal_init(TE_DEFAULT_INIT_STD)
        self.eps = eps
        self.zero_centered_gamma = zero_centered_gamma
        self.activation = activation
        self.layer_norm_weight = _gamma(hidden_size, zero_centered_gamma)
        self.fc1_weight = nn.Parameter(torch.empty(2 * ffn_hidden_size, hidden_size))
        self.fc2_weight = nn.Parameter(torch.empty(hidden_size, ffn_hidden_size))
        init_method(self.fc1_weight)
        output_layer_init_method(self.fc2_weight)
        self.fc1_bias = _zeros(2 * ffn_hidden_size) if bias else None
        self.fc2_bias = _zeros(hidden_size) if bias else None
        self.fc1 = GemmSite("fc1")
        self.fc2 = GemmSite("fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = rms_norm_output(x, self.layer_norm_weight, self.eps, self.zero_centered_gamma)
        hidden = biased(self.fc1(normed, self.fc1_weight), self.fc1_bias)
        return biased(self.fc2(gated_activation(hidden, self.activation), self.fc2_weight), self.fc2_bias)


def hidden_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """TE's hidden_dropout on a sublayer's output before its residual add (Phi-3's resid_pdrop)."""
    return F.dropout(x, p=p, training=training) if p and training else x

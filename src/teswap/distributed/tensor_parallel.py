"""Tensor parallelism for both sides of a pair, Megatron style (what TE's own `tp_group` layers do).

Stock runs HF's own plan (`config.base_model_tp_plan`: q/k/v, gate/up column-parallel, o/down
row-parallel) through DTensor's `parallelize_module`, with local outputs, so HF's attention runs on
its share of the heads. The torch twin's GEMMs are not nn.Linear, so DTensor's styles cannot shard
them: `shard_twin_layer` gives the twin TE's layout of the same split, column-parallel QKV and fc1
(each of q, k, v and gate, up cut by rows, head- and group-aligned), row-parallel proj and fc2, with
the two collectives TE's tensor-parallel layers run: the input copied into the region (identity
forward, gradient all-reduced backward) and the row-parallel output all-reduced (forward; identity
backward). Sequence parallelism is not applied: HF's inputs are batch-first (TE's sequence parallel
assumes sequence-first input), so it would change the layout stock runs in.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from teswap.distributed.launch import LaunchError

_STYLES = {"colwise": "ColwiseParallel", "rowwise": "RowwiseParallel"}


class _CopyToRegion(torch.autograd.Function):
    """Identity forward; the gradient all-reduced over the group backward (TE/Megatron: copy to TP region)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromRegion(torch.autograd.Function):
    """Sum over the group forward; identity backward (TE/Megatron: reduce from TP region)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _RegionGemm:
    """A column-parallel GEMM site: its input enters the tensor-parallel region, then the site runs as before."""

    def __init__(self, site: Any, group: Any) -> None:
        self.site, self.group = site, group

    def __getattr__(self, name: str) -> Any:  # name, fp8_scaling: the wrapped site's
        return getattr(self.__dict__["site"], name)

    def __call__(self, inp: Any, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(inp, torch.Tensor):
            inp = _CopyToRegion.apply(inp, self.group)
        elif dataclasses.is_dataclass(inp) and not isinstance(inp, type):  # a fused norm's output: its rounded
            inp = dataclasses.replace(inp, rounded=_CopyToRegion.apply(inp.rounded, self.group))  # type: ignore[type-var,attr-defined]
        return self.site(inp, weight)


def check_divisible(config: Any, tp_size: int) -> None:
    """Refuse a tensor-parallel degree the heads, groups or MLP width do not split into (TE needs the same)."""
    heads = config.num_attention_heads
    groups = getattr(config, "num_key_value_heads", None) or heads
    for name, value in (("num_attention_heads", heads), ("num_key_value_heads", groups),
                        ("intermediate_size", config.intermediate_size)):
        if value % tp_size:
            raise LaunchError(f"--parallel tp over {tp_size} ranks needs {name} ({value}) divisible by {tp_size}")


def stock_plan(config: Any) -> dict[str, Any]:
    """HF's tensor-parallel plan of one decoder layer as DTensor styles (local outputs)."""
    from torch.distributed.tensor import parallel

    plan = getattr(config, "base_model_tp_plan", None) or {}
    styles: dict[str, Any] = {}
    for pattern, style in plan.items():
        if not pattern.startswith("layers.*."):
            continue
        if style not in _STYLES:
            raise LaunchError(f"{config.model_type}: HF's tensor-parallel plan shards {pattern} as {style!r}, "
                              "which teswap's twin does not reproduce; use --parallel fsdp")
        styles[pattern.removeprefix("layers.*.")] = getattr(parallel, _STYLES[style])()
    if not styles:
        raise LaunchError(f"{config.model_type}: HF has no tensor-parallel plan for this family; use --parallel fsdp")
    return styles


def shard_stock(model: Any, tp_mesh: Any) -> None:
    """Every decoder layer of the stock model through HF's plan with DTensor."""
    from torch.distributed.tensor.parallel import parallelize_module

    plan = stock_plan(model.config)
    for layer in model.base_model.layers:
        parallelize_module(layer, tp_mesh, plan)


def _rows(weight: torch.Tensor, parts: list[int], rank: int, tp: int) -> torch.Tensor:
    """This rank's rows of each consecutive part of `weight` (each part cut in tp equal pieces), concatenated."""
    pieces = weight.split(parts, dim=0)
    return torch.cat([piece.chunk(tp, dim=0)[rank] for piece in pieces], dim=0)


def _set(module: Any, name: str, value: torch.Tensor, dim: int = 0) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous(), requires_grad=old.requires_grad))
    module.teswap_tp_sharded = {**getattr(module, "teswap_tp_sharded", {}), name: dim}  # the dim it is cut on


def shard_twin_layer(layer: Any, group: Any, rank: int, tp: int) -> None:
    """The twin's decoder layer cut to this rank's share, with TE's tensor-parallel collectives as hooks."""
    attention, mlp = layer.self_attention, layer.layernorm_mlp
    if attention.fused or attention.proj.bias is not None or mlp.fc2_bias is not None:
        raise LaunchError("--parallel tp on the torch twin shards split QKV without output biases; "
                          "this model has fused QKV or a proj/fc2 bias")
    if attention.q_norm is not None:  # a per-head norm inside the region: its gradient would be partial per rank
        raise LaunchError("--parallel tp: q/k norms inside the tensor-parallel region are not sharded yet; "
                          "use --parallel fsdp")
    qkv = attention.layernorm_qkv
    for name in qkv.split_names:
        _set(qkv, name, getattr(qkv, name).chunk(tp, dim=0)[rank])
    for name in qkv.bias_names:
        _set(qkv, name, getattr(qkv, name).chunk(tp, dim=0)[rank])
    qkv._fused_buffer = None
    _set(attention.proj, "weight", attention.proj.weight.chunk(tp, dim=1)[rank], dim=1)
    attention.heads, attention.groups = attention.heads // tp, attention.groups // tp
    half = mlp.fc1_weight.shape[0] // 2
    _set(mlp, "fc1_weight", _rows(mlp.fc1_weight, [half, half], rank, tp))  # [gate; up], each cut by rows
    if mlp.fc1_bias is not None:
        _set(mlp, "fc1_bias", _rows(mlp.fc1_bias, [half, half], rank, tp))
    _set(mlp, "fc2_weight", mlp.fc2_weight.chunk(tp, dim=1)[rank], dim=1)
    # As TE's LayerNormLinear / LayerNormMLP: the norm runs on the whole input, its output enters the region
    # (so the norm's gradient is the all-reduced one), the row-parallel output leaves it summed.
    qkv.gemm, mlp.fc1 = _RegionGemm(qkv.gemm, group), _RegionGemm(mlp.fc1, group)
    for region in (attention, mlp):
        region.register_forward_hook(lambda _m, _args, out: _ReduceFromRegion.apply(out, group))
    layer.teswap_tensor_parallel = {"tp_size": tp, "rank": rank}


def shard_twin(model: Any, group: Any, rank: int, tp: int) -> None:
    for layer in model.base_model.layers:
        shard_twin_layer(layer, group, rank, tp)


def tp_sharded_names(model: nn.Module) -> dict[str, int]:
    """The twin's parameters cut by tensor parallelism (each rank holds 1/tp of them): full name -> cut dim."""
    names = {}
    for prefix, module in model.named_modules():
        for name, dim in getattr(module, "teswap_tp_sharded", {}).items():
            names[f"{prefix}.{name}" if prefix else name] = dim
    return names

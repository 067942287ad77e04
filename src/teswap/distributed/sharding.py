"""A pair sharded by the launch's plan, the same way on both sides, and an audit that it really is.

- fsdp: FSDP2 `fully_shard` on each decoder layer, then on the root, on both models, with one
  MixedPrecisionPolicy (parameters in the model dtype, gradients reduced in fp32). TE's layers take the
  same calls (TE's own tests/pytorch/distributed/test_torch_fsdp2.py shard materialised or meta-built
  TransformerLayers with fully_shard per child, then the root).
- tp: stock through HF's plan with DTensor, the twin through TE-style column/row-parallel shards
  (tensor_parallel.py). TE's own layers would take tp_group / tp_size / set_parallel_mode at
  construction; that path is refused here until it is wired and run on GPUs.
- fsdp+tp: tp inside the mesh's "tp" dimension, then FSDP2 over its "dp" dimension (a 2-D mesh).

`audit` runs before anything is timed or compared: every decoder layer of both sides must hold the
plan's shards (FSDP2 DTensor parameters sharded over dp, TP shards of 1/tp of the rows or columns), so
a plan that silently did nothing on one side cannot pass for a sharded run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from teswap.distributed.launch import LaunchError, Parallel
from teswap.distributed.tensor_parallel import check_divisible, shard_stock, shard_twin
from teswap.errors import TeswapError
from teswap.swap.pair import Pair


class AuditError(TeswapError):
    """A side of the pair is not sharded as the plan says."""


def mixed_precision(dtype: torch.dtype) -> Any:
    """The one MixedPrecisionPolicy both sides take: parameters in the model dtype, gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def fsdp_wrap(model: Any, dp_mesh: Any, dtype: torch.dtype) -> None:
    """fully_shard each decoder layer, then the root (torchtitan's and TE's tests' wrapping)."""
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision(dtype)
    for layer in model.base_model.layers:
        fully_shard(layer, mesh=dp_mesh, mp_policy=policy)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy)


def shard_pair(pair: Pair, parallel: Parallel) -> Pair:
    """Both sides sharded by `parallel.plan` on `parallel.device`, audited; replicas: moved only."""
    stock: Any = pair.stock.to(parallel.device)  # type: ignore[arg-type]  # transformers wraps .to
    swapped: Any = pair.swapped.to(parallel.device)  # type: ignore[arg-type]
    if parallel.plan in ("tp", "fsdp+tp"):
        if pair.backend != "torch":
            raise LaunchError(f"--parallel {parallel.plan} on backend {pair.backend!r}: TE's tensor parallelism "
                              "(tp_group / tp_size / set_parallel_mode) is not wired yet; use --backend torch, "
                              "or --parallel fsdp")
        check_divisible(pair.config, parallel.tp_size)
        tp_mesh = parallel.submesh("tp")
        shard_stock(stock, tp_mesh)
        shard_twin(swapped, tp_mesh.get_group(), tp_mesh.get_local_rank(), parallel.tp_size)
        swapped.teswap_tp_mesh = tp_mesh  # checkpoints save the twin's shards as DTensors over it
    if parallel.plan in ("fsdp", "fsdp+tp"):
        for model in (stock, swapped):
            fsdp_wrap(model, parallel.submesh("dp"), pair.dtype)
    sharded = replace(pair, stock=stock, swapped=swapped, device=parallel.device)
    audit(sharded, parallel)
    return sharded


def _is_fsdp_sharded(param: torch.Tensor, dp: int) -> bool:
    from torch.distributed.tensor import DTensor, Shard

    return isinstance(param, DTensor) and (dp == 1 or any(isinstance(p, Shard) for p in param.placements))


def audit(pair: Pair, parallel: Parallel) -> dict[str, Any]:
    """Check both sides are sharded as the plan says; raises AuditError naming the first parameter that is not.
    Returns what was checked (counts of sharded parameters per side), for the run's record."""
    checked: dict[str, Any] = {"plan": parallel.plan}
    for side in ("stock", "swapped"):
        model: Any = getattr(pair, side)
        layers: list[Any] = list(model.base_model.layers)
        if parallel.plan in ("fsdp", "fsdp+tp"):
            for name, param in model.named_parameters():
                if not _is_fsdp_sharded(param, parallel.dp_size):
                    raise AuditError(f"{side}: {name} is not an FSDP2 shard over {parallel.dp_size} ranks")
        if parallel.plan in ("tp", "fsdp+tp"):
            _audit_tp(side, layers, pair.config, parallel.tp_size)
        checked[side] = {"layers": len(layers), "parameters": sum(1 for _ in model.parameters())}
    return checked


def _local_rows(param: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = param
    while isinstance(local, DTensor):
        local = local.to_local()
    return local.shape[0]


def _audit_tp(side: str, layers: list[Any], config: Any, tp: int) -> None:
    """Each layer's query projection holds 1/tp of the query rows (and its attention 1/tp of the heads)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q_rows = config.num_attention_heads * head_dim
    expected = q_rows // tp
    for index, layer in enumerate(layers):
        query = (layer.self_attn.q_proj.weight if side == "stock"
                 else layer.self_attention.layernorm_qkv.query_weight)
        # FSDP2 over tp-local shards cuts rows again: a row count that divides expected and is below q_rows is
        # only reachable when the TP cut happened; the TP marker and DTensor placements say so exactly.
        rows = _local_rows(query)
        if side == "stock":
            ok = _has_tp_placement(query, tp) or rows == expected
        else:
            ok = getattr(layer, "teswap_tensor_parallel", {}).get("tp_size") == tp and rows <= expected
        if not ok:
            raise AuditError(f"{side}: layer {index} query projection holds {rows} of {q_rows} rows; "
                             f"--parallel tp over {tp} ranks should leave {expected}")


def _has_tp_placement(param: torch.Tensor, tp: int) -> bool:
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(param, DTensor) or tp == 1:
        return tp == 1
    mesh = param.device_mesh
    names = mesh.mesh_dim_names or ()
    return any(isinstance(p, Shard) and (names[i] if i < len(names) else "") in ("tp", "")
               for i, p in enumerate(param.placements))

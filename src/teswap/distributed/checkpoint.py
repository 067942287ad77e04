"""A sharded pair saved and loaded with torch.distributed.checkpoint (DCP): each rank writes its shards.

So a large model is built and sharded once and checked again later from its checkpoint; `round_trip`
proves a load restores every tensor of both sides exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from teswap.distributed.tensor_parallel import tp_sharded_names


def _state(model: nn.Module) -> dict[str, Any]:
    """The model's state for DCP: FSDP2 / DTensor shards as they are; the twin's tensor-parallel shards (plain
    local tensors) as DTensors over the tp mesh, so each rank's shard is saved, not rank 0's alone."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor, Shard

    state: dict[str, Any] = dict(get_model_state_dict(model))
    mesh = getattr(model, "teswap_tp_mesh", None)
    for name, dim in tp_sharded_names(model).items():
        if name in state and not isinstance(state[name], DTensor):
            state[name] = DTensor.from_local(state[name], mesh, [Shard(dim)], run_check=False)
    return state


def _unwrapped(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    cut = tp_sharded_names(model)
    return {name: value.to_local() if name in cut else value for name, value in state.items()}


def save_pair(stock: nn.Module, swapped: nn.Module, directory: Path | str) -> None:
    """Both sides' sharded state into `directory` (every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save({"stock": _state(stock), "swapped": _state(swapped)}, checkpoint_id=str(directory))


def load_pair(stock: nn.Module, swapped: nn.Module, directory: Path | str) -> None:
    """Both sides' state from `directory`, into models sharded the way they were saved (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    state = {"stock": _state(stock), "swapped": _state(swapped)}
    dcp.load(state, checkpoint_id=str(directory))
    set_model_state_dict(stock, _unwrapped(stock, state["stock"]))
    set_model_state_dict(swapped, _unwrapped(swapped, state["swapped"]))


def _local(value: Any) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return value.to_local() if isinstance(value, DTensor) else value


def local_differences(expected: nn.Module, actual: nn.Module) -> list[str]:
    """The names of tensors whose local shards differ between two models sharded alike."""
    want, got = _state(expected), _state(actual)
    return sorted(name for name in want if name not in got or not torch.equal(_local(want[name]), _local(got[name])))

"""The launch: torchrun's environment read once into a `Parallel` (plan, ranks, mesh, device).

`launch(plan)` is the only place that reads RANK / WORLD_SIZE / LOCAL_RANK for the distributed
machinery: under torchrun it pins the device from LOCAL_RANK (cuda:LOCAL_RANK on a GPU machine, the
CPU otherwise), calls `init_process_group(backend=None)` (gloo on CPU, NCCL for CUDA tensors) with a
short timeout, builds one DeviceMesh both sides of the pair share, and destroys the group on exit.
Outside torchrun it yields `Parallel.single()`: nothing is initialised and nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from teswap.errors import TeswapError

PLANS = ("replicas", "fsdp", "tp", "fsdp+tp")
SHARDED = ("fsdp", "tp", "fsdp+tp")  # plans whose steps run collectives (a failing rank cannot be waited for)
DEFAULT_TIMEOUT_S = 300.0  # longer than the slowest rank's pair build, far shorter than NCCL's 10 minutes
TIMEOUT_ENV = "TESWAP_DIST_TIMEOUT_S"


class LaunchError(TeswapError):
    """A launch that cannot run as asked (a plan outside torchrun, a mesh that does not divide the world)."""


@dataclass(frozen=True, kw_only=True)
class Parallel:
    """One process's place in the launch: plan, ranks, the mesh's data- and tensor-parallel degrees."""

    plan: str
    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    dp_size: int
    tp_size: int
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh, dims ("dp",), ("tp",) or ("dp", "tp")
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.plan not in PLANS:
            raise LaunchError(f"--parallel must be one of {', '.join(PLANS)}, got {self.plan!r}")
        if self.dp_size * self.tp_size != self.world_size:
            raise LaunchError(f"mesh {self.dp_size} x {self.tp_size} does not cover {self.world_size} ranks")

    @classmethod
    def single(cls, device: torch.device | str = "cpu", plan: str = "replicas") -> Parallel:
        """One process, no process group: what every command is outside torchrun."""
        return cls(plan=plan, world_size=1, rank=0, local_rank=0, device=torch.device(device), dp_size=1, tp_size=1)

    @property
    def distributed(self) -> bool:
        """Whether a process group is up (torchrun launched this process)."""
        return self.mesh is not None

    @property
    def sharded(self) -> bool:
        return self.plan in SHARDED

    @property
    def mesh_shape(self) -> dict[str, int]:
        return {"dp": self.dp_size, "tp": self.tp_size}

    def submesh(self, name: str) -> Any:
        """The mesh's `name` dimension ("dp" or "tp"), as FSDP2 and DTensor take it."""
        return self.mesh if self.mesh.mesh_dim_names == (name,) else self.mesh[name]

    def group(self, name: str) -> Any:
        """The process group of mesh dimension `name`."""
        return self.submesh(name).get_group()

    def describe(self) -> dict[str, Any]:
        return {"plan": self.plan, "world_size": self.world_size, "rank": self.rank, "local_rank": self.local_rank,
                "mesh": self.mesh_shape, "device": str(self.device)}


def under_torchrun(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    env = os.environ if environ is None else environ
    return all(name in env for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def mesh_degrees(plan: str, world_size: int, tp_size: int | None) -> tuple[int, int]:
    """(dp, tp) for `plan` on `world_size` ranks; `tp_size` is the tensor-parallel degree of fsdp+tp."""
    if plan in ("replicas", "fsdp"):
        if tp_size not in (None, 1):
            raise LaunchError(f"--tp-size applies to tp and fsdp+tp, not {plan}")
        return world_size, 1
    if plan == "tp":
        if tp_size not in (None, world_size):
            raise LaunchError(f"--parallel tp shards over every rank: --tp-size must be {world_size} or unset")
        return 1, world_size
    tp = tp_size or 2
    if world_size % tp or world_size == tp:
        raise LaunchError(f"--parallel fsdp+tp needs a world size that is a multiple of --tp-size {tp} "
                          f"and larger than it, got {world_size} ranks")
    return world_size // tp, tp


def device_for(local_rank: int, asked: str | None) -> torch.device:
    """cuda:LOCAL_RANK where there is a GPU (or `asked` is cuda), the CPU where asked or without one."""
    if asked is not None and torch.device(asked).type == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if asked is not None:
        raise LaunchError(f"--device {asked} asked for, but torch sees no CUDA device on this rank")
    return torch.device("cpu")


def _timeout_s(environ: dict[str, str]) -> float:
    text = environ.get(TIMEOUT_ENV)
    try:
        return DEFAULT_TIMEOUT_S if text is None else float(text)
    except ValueError:
        raise LaunchError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None


@contextmanager
def launch(plan: str = "replicas", *, device: str | None = None, tp_size: int | None = None,
           environ: dict[str, str] | None = None) -> Iterator[Parallel]:
    """This process's Parallel for the block: a process group and mesh under torchrun, else `single`."""
    env = dict(os.environ if environ is None else environ)
    if plan not in PLANS:
        raise LaunchError(f"--parallel must be one of {', '.join(PLANS)}, got {plan!r}")
    if not under_torchrun(env):
        if plan != "replicas" or tp_size not in (None, 1):
            raise LaunchError(f"--parallel {plan} shards the pair over ranks: launch it with "
                              f"`torchrun --nproc-per-node N -m teswap.cli ...`")
        yield Parallel.single(device_for(0, device) if device is None else torch.device(device))
        return
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    world, rank, local_rank = int(env["WORLD_SIZE"]), int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    dp, tp = mesh_degrees(plan, world, tp_size)
    chosen = device_for(local_rank, device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    timeout_s = _timeout_s(env)
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(backend=None, timeout=timedelta(seconds=timeout_s))
    try:
        names = ("dp", "tp") if plan == "fsdp+tp" else ("tp",) if plan == "tp" else ("dp",)
        shape = (dp, tp) if plan == "fsdp+tp" else (world,)
        mesh = init_device_mesh(chosen.type, shape, mesh_dim_names=names)
        yield Parallel(plan=plan, world_size=world, rank=rank, local_rank=local_rank, device=chosen, dp_size=dp,
                       tp_size=tp, mesh=mesh, timeout_s=timeout_s)
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()

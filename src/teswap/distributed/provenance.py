"""Who ran each rank: host, GPU, versions, commit, gathered to every rank and written with the run.

A launch whose ranks run different library versions or commits is refused before anything is built:
their numbers would not describe one program. Every rank takes rank 0's run id and start time, so the
ranks' files share one run and their records merge by it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from teswap.distributed.launch import LaunchError, Parallel
from teswap.distributed.sync import RankSync
from teswap.store.provenance import Provenance
from teswap.store.ranks import rank_info
from teswap.store.runs import new_run_id

SAME_ON_EVERY_RANK = ("commit", "dirty", "python", "torch", "transformers", "transformer_engine", "teswap")


@dataclass(frozen=True, kw_only=True)
class Launch:
    """The run as every rank of it records it: the shared run id and provenance, the launch's own fields."""

    run_id: str | None
    provenance: Provenance
    fields: dict[str, Any] | None  # a record's "distributed" field (None for one process)


def rank_identity(parallel: Parallel, provenance: Provenance) -> dict[str, Any]:
    """This rank's host, device (GPU UUID where there is one), versions and commit."""
    libraries = provenance.libraries
    uuid = None
    if parallel.device.type == "cuda":
        from teswap.hardware.nvml import torch_device_uuid

        uuid = torch_device_uuid(parallel.device)
    return {"rank": parallel.rank, "local_rank": parallel.local_rank, "host": provenance.machine.hostname,
            "device": str(parallel.device), "gpu_uuid": uuid, "commit": provenance.git.sha,
            "dirty": provenance.git.dirty, "python": libraries.python, "torch": libraries.torch,
            "transformers": libraries.transformers, "transformer_engine": libraries.transformer_engine,
            "teswap": libraries.teswap}


def check_same(identities: list[dict[str, Any]]) -> None:
    """Refuse a launch whose ranks differ in a version or the commit; the message names the ranks."""
    for name in SAME_ON_EVERY_RANK:
        values = {str(identity[name]) for identity in identities}
        if len(values) > 1:
            by_rank = ", ".join(f"rank {i['rank']}: {i[name]}" for i in identities)
            raise LaunchError(f"the ranks of this launch run different {name} ({by_rank}); launch every rank "
                              "from the same checkout and environment")


def gather_launch(parallel: Parallel, provenance: Provenance,
                  amax_group_size: dict[str, int] | None = None) -> Launch:
    """Every rank's identity checked and gathered; rank 0's run id and start time shared with all."""
    sync = RankSync(parallel)
    if not sync.active:
        return Launch(run_id=None, provenance=provenance, fields=None)
    own = rank_info()
    run_id = own.run_id or new_run_id()
    identities = sync.gather({**rank_identity(parallel, provenance), "run_id": run_id,
                              "utc_time": provenance.utc_time})
    check_same(identities)
    shared = dataclasses.replace(provenance, utc_time=identities[0]["utc_time"])
    fields = {**parallel.describe(), "dp_size": parallel.dp_size, "tp_size": parallel.tp_size,
              "amax_group_size": amax_group_size, "torch_backend": _backend_name(),
              "ranks": [{k: v for k, v in i.items() if k not in ("run_id", "utc_time")} for i in identities]}
    return Launch(run_id=identities[0]["run_id"], provenance=shared, fields=fields)


def _backend_name() -> str | None:
    import torch.distributed as dist

    return str(dist.get_backend_config()) if dist.is_initialized() else None


def amax_group_size(parallel: Parallel) -> dict[str, int]:
    """Per swapped backend, how many ranks an FP8 DelayedScaling amax is reduced over in this launch. TE:
    replicas reduce over their own rank (as stock, which reduces nothing; `fp8_amax_group` gives TE that
    group); sharded plans over the whole mesh, data- and tensor-parallel ranks together (TE's default WORLD
    group, what its docs prescribe for the amaxes of sharded tensors). The torch twin's emulation reduces over
    its own rank only, under every plan."""
    return {"torch": 1, "te": 1 if parallel.plan == "replicas" else parallel.world_size}


def fp8_amax_group(parallel: Parallel) -> Any:
    """The process group TE's autocast reduces amaxes over in this launch: each rank's own under replicas
    (made collectively, every rank calls this), None (TE's default, WORLD) otherwise or for one process."""
    if not RankSync(parallel).active or parallel.plan != "replicas":
        return None
    import torch.distributed as dist

    own, _ = dist.new_subgroups(group_size=1)
    return own

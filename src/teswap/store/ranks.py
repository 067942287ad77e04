"""Rank-aware writing and merging of records, for runs launched with `torchrun` (one process per GPU).

Each rank benchmarks its own GPU and appends to its own run file, named with the shared run id and
`rank<R>of<W>`, so ranks never contend for a file and a dead rank loses only its own cells. The run id
is shared through the environment: TESWAP_RUN_ID if set, else torchrun's TORCHELASTIC_RUN_ID.
`aggregate_ranks` merges the per-rank bench records of one run into per-cell totals: throughput and
energy add up over GPUs, time and memory are per GPU (the slowest rank and the largest peak count).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    run_id: str | None  # shared by every rank of one launch, when the launcher provides one

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def file_suffix(self) -> str:
        return f"_rank{self.rank}of{self.world_size}" if self.distributed else ""


def rank_info(environ: dict[str, str] | None = None) -> RankInfo:
    """This process's rank, world size and shared run id, from torchrun's environment variables."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    run_id = env.get("TESWAP_RUN_ID") or env.get("TORCHELASTIC_RUN_ID")
    if run_id is not None:
        run_id = re.sub(r"[^A-Za-z0-9-]+", "-", run_id)[:40] or None
    return RankInfo(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", rank)), run_id=run_id)


_SUMMED = ("tokens_per_s", "energy_j")
_MAXED = ("peak_allocated_bytes", "peak_reserved_bytes", "power_peak_w")


def aggregate_ranks(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge bench records of one run across ranks: one record per cell with totals and per-GPU figures.

    Raises ValueError when a cell lacks ranks (a partial run must not pass for a whole one).
    """
    by_cell: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("kind") == "bench" and record.get("status") == "ok":
            key = (record["run_id"], tuple(sorted(record["cell"].items())))
            by_cell[key].append(record)
    return [_merge_cell(cell_records) for cell_records in by_cell.values()]


def _merge_cell(records: list[dict[str, Any]]) -> dict[str, Any]:
    ranks = sorted(r.get("rank", {}).get("rank", 0) for r in records)
    world = records[0].get("rank", {}).get("world_size", 1)
    if ranks != list(range(world)):
        raise ValueError(f"cell {records[0]['cell']} has ranks {ranks} of world size {world}; run incomplete")
    metrics = [r["metrics"] for r in records]
    merged = {name: _sum(m.get(name) for m in metrics) for name in _SUMMED}
    merged |= {name: _max(m.get(name) for m in metrics) for name in _MAXED}
    merged["tokens_per_s_per_gpu"] = None if merged["tokens_per_s"] is None else merged["tokens_per_s"] / world
    medians = [r["stats"]["median_s"] for r in records if r.get("stats")]
    merged["slowest_rank_median_s"] = max(medians) if medians else None
    # Each rank's energy window covers its own token count (energy_j / energy_per_token_j); pool them.
    per_token = [m.get("energy_per_token_j") for m in metrics]
    if merged["energy_j"] is not None and all(per_token):
        tokens = sum(m["energy_j"] / e for m, e in zip(metrics, per_token, strict=True))  # type: ignore[operator]
        merged["energy_per_token_j"] = merged["energy_j"] / tokens
    else:
        merged["energy_per_token_j"] = None
    return {"kind": "bench_aggregate", "run_id": records[0]["run_id"], "cell": records[0]["cell"],
            "world_size": world, "metrics": merged}


def _sum(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None

"""Rank-aware writing and merging of records, for runs launched with `torchrun` (one process per GPU).

Each rank benchmarks its own GPU and appends to its own run file, named with the shared run id and
`rank<R>of<W>`, so ranks never contend for a file and a dead rank loses only its own cells. The run id
is shared through the environment: TESWAP_RUN_ID if set, else torchrun's TORCHELASTIC_RUN_ID (except its
default, "none", which every launch without --rdzv-id has: no id at all, so unrelated launches never merge).
`aggregate_ranks` merges the per-rank bench records of one run into one per cell, by the rules of
docs/distributed.md: all tokens over the slowest rank's time, the largest peak, energy summed.
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
    if run_id == "none":  # torchrun's default id: not an id of this launch
        run_id = None
    if run_id is not None:
        run_id = re.sub(r"[^A-Za-z0-9-]+", "-", run_id)[:40] or None
    return RankInfo(rank=rank, world_size=world, local_rank=int(env.get("LOCAL_RANK", rank)), run_id=run_id)


_MAXED = ("peak_allocated_bytes", "peak_reserved_bytes", "power_peak_w", "peak_rss_bytes")


def aggregate_ranks(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge bench records of one run across ranks: one record per cell, by the slowest rank.

    tokens/s = every distinct token of a step (tokens per step x data-parallel degree: tensor-parallel
    ranks share theirs) / the slowest rank's median step time; peak memory the largest rank's; energy
    summed over ranks, per token over the launch's tokens; MFU from the slowest rank (the cell's
    samples are its times) and, under tensor parallelism, per GPU (each rank does 1/tp of the FLOPs).
    Raises ValueError when a cell lacks ranks (a partial run must not pass for a whole one).
    """
    by_cell: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("kind") == "bench" and record.get("status") == "ok":
            key = (record["run_id"], tuple(sorted(record["cell"].items())))
            by_cell[key].append(record)
    return [_merge_cell(cell_records) for cell_records in by_cell.values()]


def _degrees(records: list[dict[str, Any]], world: int) -> tuple[str, int, int]:
    """(plan, data-parallel degree, tensor-parallel degree): as recorded, or replicas for older records."""
    launch = records[0].get("distributed") or {}
    return launch.get("plan", "replicas"), int(launch.get("dp_size", world)), int(launch.get("tp_size", 1))


def _rank_medians(records: list[dict[str, Any]]) -> list[float]:
    """Every rank's own median step time: gathered into each record (synchronised runs), else each
    record's own statistics (runs from before the ranks were synchronised)."""
    launch = records[0].get("distributed") or {}
    if launch.get("rank_median_s"):
        return [float(m) for m in launch["rank_median_s"]]
    return [r["stats"]["median_s"] for r in records if r.get("stats")]


def _tokens_per_step(record: dict[str, Any]) -> float | None:
    launch = record.get("distributed") or {}
    if launch.get("tokens_per_step"):
        return float(launch["tokens_per_step"])
    tokens, stats = record["metrics"].get("tokens_per_s"), record.get("stats") or {}
    return None if tokens is None or not stats.get("median_s") else tokens * stats["median_s"]


def _merge_cell(records: list[dict[str, Any]]) -> dict[str, Any]:
    ranks = sorted(r.get("rank", {}).get("rank", 0) for r in records)
    world = records[0].get("rank", {}).get("world_size", 1)
    if ranks != list(range(world)):
        raise ValueError(f"cell {records[0]['cell']} has ranks {ranks} of world size {world}; run incomplete")
    records = sorted(records, key=lambda r: r.get("rank", {}).get("rank", 0))
    plan, dp, tp = _degrees(records, world)
    metrics = [r["metrics"] for r in records]
    medians = _rank_medians(records)
    # Synchronised: the cell's samples are each step at its slowest rank (the same on every record), the time
    # the launch took; older records: the slowest rank's own median.
    stats = records[0].get("stats") or {}
    slowest = stats.get("median_s") if launch_synchronised(records[0]) else (max(medians) if medians else None)
    per_step = _tokens_per_step(records[0])
    merged: dict[str, Any] = {name: _max(m.get(name) for m in metrics) for name in _MAXED}
    merged["tokens_per_s"] = None if slowest is None or per_step is None else per_step * dp / slowest
    merged["tokens_per_s_per_gpu"] = None if merged["tokens_per_s"] is None else merged["tokens_per_s"] / world
    merged["slowest_rank_median_s"] = slowest
    merged["slowest_rank"] = medians.index(max(medians)) if medians else None
    merged["energy_j"] = _sum(m.get("energy_j") for m in metrics)
    # Each rank's energy window covers its own steps (energy_j / energy_per_token_j tokens); tensor-parallel
    # ranks worked on the same tokens, so the launch's tokens are the ranks' sum / tp.
    per_token = [m.get("energy_per_token_j") for m in metrics]
    if merged["energy_j"] is not None and all(per_token):
        tokens = sum(m["energy_j"] / e for m, e in zip(metrics, per_token, strict=True)) / tp  # type: ignore[operator]
        merged["energy_per_token_j"] = merged["energy_j"] / tokens
    else:
        merged["energy_per_token_j"] = None
    for name in ("mfu_vs_bf16_peak", "mfu_vs_precision_peak"):
        value = metrics[0].get(name)  # every rank's figure is at the slowest rank's step times
        merged[name] = None if value is None else value / tp
    paired = records[0].get("paired") if launch_synchronised(records[0]) else None
    if paired is not None and paired.get("baseline_tokens_per_s") is None and paired.get("baseline_median_s"):
        paired = {**paired, "baseline_tokens_per_s": per_step / paired["baseline_median_s"] if per_step else None}
    return {"kind": "bench_aggregate", "run_id": records[0]["run_id"], "cell": records[0]["cell"],
            "world_size": world, "plan": plan, "dp_size": dp, "tp_size": tp, "metrics": merged,
            "paired": paired}


def launch_synchronised(record: dict[str, Any]) -> bool:
    """Whether the record's ranks were timed together (barriers, slowest rank per step): its rounds are the
    launch's, so its paired speedup stands for the whole launch."""
    return bool((record.get("distributed") or {}).get("rank_median_s"))
def _sum(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))  # type: ignore[arg-type]


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None

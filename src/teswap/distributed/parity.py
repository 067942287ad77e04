"""Parity under sharding: the plan is exact on stock, and the swap is as close to stock sharded as unsharded.

Every rank builds the same pair from one seed and runs the same inputs through four models: stock and
swapped unsharded (the reference a small model allows beside the pair), and stock and swapped sharded
by the plan (copies of the same weights). Three comparisons, each the worst over the ranks
(all-reduced), each against the same reference on every rank:

- plan: sharded stock vs unsharded stock, logits and per-parameter gradient norms: the plan is exact
  (up to the reduction order its collectives change);
- swap: sharded swapped vs sharded stock, logits; it may not exceed the unsharded swap error by more
  than the plan's own error allows;
- gradients: the whole-model gradient norm of swapped vs stock, sharded (fused QKV and [gate; up]
  shards are cut differently from HF's split ones, so whole norms are compared, never shards), and
  every swapped parameter's norm sharded vs unsharded.

Gradient norms are taken of the full tensors (DTensor shards gathered; the twin's tensor-parallel
shards summed in squares over the group), before any optimizer step: an optimizer such as Adam would
hide a gradient N times too large.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from teswap.distributed.checkpoint import load_pair, local_differences, save_pair
from teswap.distributed.launch import LaunchError, Parallel
from teswap.distributed.provenance import gather_launch
from teswap.distributed.sharding import AuditError, audit, shard_pair
from teswap.distributed.sync import RankSync
from teswap.distributed.tensor_parallel import tp_sharded_names
from teswap.precision.table import get_precision
from teswap.store.provenance import capture_provenance
from teswap.store.records import ParityRecord
from teswap.swap.pair import Pair, build_pair

FP8_UNDER_SHARDING = "FP8 parity under sharding waits for TE's amax groups on GPUs (docs/distributed.md)"
SHARDED_POLICY = "sharded"  # the bounds below: the plan within PLAN_TOLERANCE, the swap within 2x its unsharded error
# Relative bound on what sharding itself may change (reduction order of the plan's collectives), by model dtype.
PLAN_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@dataclass(frozen=True, kw_only=True)
class Row:
    what: str
    error: float
    bound: float

    @property
    def passed(self) -> bool:
        return self.error <= self.bound

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "error": self.error, "bound": self.bound, "passed": self.passed}


@dataclass(kw_only=True)
class ShardedParity:
    """The rows of a sharded check, worst over the ranks, and what the launch was."""

    launch: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def text(self) -> str:
        head = (f"sharded parity: --parallel {self.launch['plan']} on {self.launch['world_size']} ranks "
                f"(mesh dp={self.launch['mesh']['dp']} x tp={self.launch['mesh']['tp']}); worst over the ranks")
        lines = [head, *(f"  {'ok  ' if r.passed else 'FAIL'} {r.what}: {r.error:.3e} (bound {r.bound:.1e})"
                         for r in self.rows)]
        return "\n".join([*lines, f"verdict: {'PASS' if self.passed else 'FAIL'}"])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "distributed": self.launch, "audit": self.audit,
                "rows": [row.to_dict() for row in self.rows]}

    def record(self, case: dict[str, Any]) -> ParityRecord:
        """The check as a parity record (rank 0 writes it: its rows are already the worst over the ranks), so a
        published speed under this plan has its verdict beside it. `case`: model, backend, precision, device,
        seq_len, batch, seed as teswap.parity.case names them; the plan and world size are added."""
        failed = [row.what for row in self.rows if not row.passed]
        launch = {k: v for k, v in self.launch.items() if k not in ("rank", "local_rank")}
        return ParityRecord(
            case=sharded_case(case, self.launch["plan"], self.launch["world_size"]),
            status="passed" if self.passed else "failed", passed=self.passed,
            reason=f"sharded: {'; '.join(failed)} over its bound" if failed else None,
            policy={"name": SHARDED_POLICY, "version": 1}, metrics=None, first_divergent_layer=None,
            verdict_rows=[row.to_dict() for row in self.rows], distributed={**launch, "audit": self.audit})


def sharded_case(case: dict[str, Any], plan: str, world_size: int) -> dict[str, Any]:
    """A parity record's case under a launch: the plan and world size the report joins its verdict by."""
    return {**case, "parallel": plan, "world_size": world_size}


def skipped_record(case: dict[str, Any], parallel: Parallel, reason: str) -> ParityRecord:
    """A planned case the sharded check does not run (FP8, or a case skipped before the launch), with why."""
    return ParityRecord.skipped(sharded_case(case, parallel.plan, parallel.world_size), reason)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (the worst element, relative to the reference's scale)."""
    scale = float(b.abs().max())
    return float((a.float() - b.float()).abs().max()) / (scale if scale else 1.0)


def _inputs(config: Any, batch: int, seq_len: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 104729)
    return torch.randint(0, config.vocab_size, (batch, seq_len), generator=generator).to(device)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _run(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Logits of `ids` and every parameter's full gradient norm after one next-token loss backward."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    logits = _full(out.logits).detach().float()
    return logits, _norms(model)


def _norms(model: nn.Module) -> dict[str, float]:
    """Each parameter's gradient norm, of the whole tensor on every rank."""
    import torch.distributed as dist

    cut = tp_sharded_names(model)
    group = getattr(model, "teswap_tp_group", None)
    norms: dict[str, float] = {}
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        square = _full(param.grad).float().pow(2).sum()
        if _plain(name) in cut and group is not None:
            dist.all_reduce(square, group=group)  # the twin's shards: the whole tensor's sum of squares
        norms[_plain(name)] = math.sqrt(float(square))
    return norms


def _plain(name: str) -> str:
    """A parameter name without wrapper prefixes (FSDP2 keeps names; compiled or checkpointed ones may not)."""
    return name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")


def _total(norms: dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in norms.values()))


def _worst_norm_change(sharded: dict[str, float], full: dict[str, float]) -> float:
    keys = sharded.keys() | full.keys()
    return max(abs(sharded.get(k, math.inf) - full.get(k, 0.0)) / (full.get(k) or 1.0) for k in keys)


def _sharded_copy(pair: Pair, parallel: Parallel) -> Pair:
    copied = replace(pair, stock=copy.deepcopy(pair.stock), swapped=copy.deepcopy(pair.swapped))
    sharded = shard_pair(copied, parallel)
    if parallel.plan in ("tp", "fsdp+tp"):
        sharded.swapped.teswap_tp_group = parallel.group("tp")
    return sharded


def check_sharded(source: Any, *, parallel: Parallel, backend: str = "torch", precision: str = "fp32",
                  seq_len: int = 32, batch: int = 2, seed: int = 0, checkpoint: Path | None = None) -> ShardedParity:
    """The plan's exactness and the swap's parity under it (rows worst over the ranks); `checkpoint`:
    also save the sharded pair there with DCP, load it into a differently seeded sharded pair, compare."""
    sync = RankSync(parallel)
    if get_precision(precision).is_fp8:
        raise LaunchError(f"check --parallel compares sharded and unsharded pairs at the model dtype (fp32, bf16); "
                          f"{precision}: {FP8_UNDER_SHARDING}")
    dtype = get_precision(precision).model_dtype
    pair = build_pair(source, seed=seed, backend=backend, dtype=dtype, device=parallel.device)
    pair.stock.train(), pair.swapped.train()
    ids = _inputs(pair.config, batch, seq_len, seed, parallel.device)
    sharded = _sharded_copy(pair, parallel)
    launch = gather_launch(parallel, capture_provenance()).fields  # every rank's identity; mixed versions refused
    result = ShardedParity(launch=launch or {**parallel.describe(), "dp_size": parallel.dp_size,
                                            "tp_size": parallel.tp_size},
                           audit=audit(sharded, parallel))
    full_stock, full_stock_norms = _run(pair.stock, ids)
    full_swapped, full_swapped_norms = _run(pair.swapped, ids)
    stock, stock_norms = _run(sharded.stock, ids)
    swapped, swapped_norms = _run(sharded.swapped, ids)
    tol = PLAN_TOLERANCE.get(dtype, 2e-2)
    plan_logits = sync.max(_relative(stock, full_stock))
    plan_grads = sync.max(_worst_norm_change(stock_norms, full_stock_norms))
    unsharded_swap = sync.max(_relative(full_swapped, full_stock))
    swap = sync.max(_relative(swapped, stock))
    total = sync.max(abs(_total(swapped_norms) - _total(stock_norms)) / (_total(stock_norms) or 1.0))
    unsharded_total = sync.max(abs(_total(full_swapped_norms) - _total(full_stock_norms))
                               / (_total(full_stock_norms) or 1.0))
    swapped_plan = sync.max(_worst_norm_change(swapped_norms, full_swapped_norms))
    result.rows += [
        Row(what="plan: stock sharded vs unsharded, logits", error=plan_logits, bound=tol),
        Row(what="plan: stock sharded vs unsharded, worst per-parameter gradient norm", error=plan_grads, bound=tol),
        Row(what="swap: swapped vs stock, sharded, logits", error=swap, bound=2 * unsharded_swap + tol),
        Row(what="swap: swapped vs stock, sharded, whole-model gradient norm", error=total,
            bound=2 * unsharded_total + tol),
        Row(what="swapped sharded vs unsharded, worst per-parameter gradient norm", error=swapped_plan, bound=tol),
    ]
    if checkpoint is not None and parallel.plan == "fsdp+tp":
        raise LaunchError("--checkpoint under fsdp+tp: the twin's tensor-parallel shards inside FSDP2 are not "
                          "saved per tp rank yet; check the round trip under fsdp or tp")
    if checkpoint is not None and parallel.sharded:
        differing = _round_trip(sharded, parallel, checkpoint, sync)
        result.rows.append(Row(what="DCP round trip: sharded pair saved, loaded into another seed's, tensors "
                                    "differing", error=float(differing), bound=0))
    return result


def _round_trip(sharded: Pair, parallel: Parallel, directory: Path, sync: RankSync) -> int:
    """Tensors (of both sides, on any rank) that differ after a DCP save and a load into other weights."""
    directory = Path(directory)
    save_pair(sharded.stock, sharded.swapped, directory)
    other = _sharded_copy(build_pair(sharded.source, seed=sharded.seed + 1, backend=sharded.backend,
                                     dtype=sharded.dtype, device=parallel.device), parallel)
    before = len(local_differences(sharded.stock, other.stock))
    load_pair(other.stock, other.swapped, directory)
    differing = local_differences(sharded.stock, other.stock) + local_differences(sharded.swapped, other.swapped)
    if not sync.any(before > 0):  # another seed's weights must differ before the load, or the test proves nothing
        raise AuditError("the DCP round trip loaded into a pair that already held the saved weights")
    return int(sync.max(float(len(differing))))



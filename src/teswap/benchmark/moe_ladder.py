"""The te_mixtral ladder for an MoE model: each step TE's example takes, as a named rung, timed against stock.

TE's te_mixtral example reports Mixtral-8x7B training step time as it moves the model onto TE step by
step (HF -> TE -> GroupedLinear -> MXFP8). The same ladder here, each rung a named option:

    hf                stock HF (HF attention, HF experts): the baseline every rung is paired against
    te-attention      TE attention and norms, HF's own experts kept (experts="hf"), bf16
    grouped-experts   + TE's grouped experts (GroupedLinear, moe_permute/unpermute), bf16
    fp8-current       + Float8CurrentScaling (per-tensor; one scale per expert weight and input)
    fp8-delayed       + DelayedScaling
    mxfp8             + MXFP8BlockScaling (Blackwell; refused with the reason elsewhere)

Every rung runs on the backend asked for ("te" on a GPU with TE, "torch" for the twin anywhere) and is
timed interleaved with the baseline (ABBA rounds, teswap.benchmark.rounds), giving a speedup with its
95% CI; each row carries the expert load balance of its model on the cell's input (max / mean tokens
per expert over the MoE layers) and the cell's memory estimate; a rung that cannot fit is skipped with
the estimate, one that cannot run here with the reason. Numbers are labelled with backend and device.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from teswap.benchmark.clocks import ClockLog
from teswap.benchmark.memory_estimate import GIB, estimate_cell, fits
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell
from teswap.benchmark.rounds import Side, run_rounds
from teswap.benchmark.timing import STEP_TIME, TimingPolicy, timer_for, warm_up
from teswap.benchmark.workloads import make_input_ids, prepare_step
from teswap.errors import TeswapError
from teswap.hardware.free_memory import free_memory
from teswap.precision.runtime import require_precision
from teswap.precision.table import PRECISIONS
from teswap.swap.pair import build_pair
from teswap.swap.sources import resolve_source


@dataclass(frozen=True)
class Rung:
    name: str
    what: str
    experts: str | None  # None: stock
    precision: str


LADDER = (
    Rung("hf", "HF attention + HF experts (stock)", None, "bf16"),
    Rung("te-attention", "TE attention + HF experts", "hf", "bf16"),
    Rung("grouped-experts", "TE attention + GroupedLinear experts", "grouped", "bf16"),
    Rung("fp8-current", "+ FP8 current scaling", "grouped", "fp8-current"),
    Rung("fp8-delayed", "+ FP8 delayed scaling", "grouped", "fp8-delayed"),
    Rung("mxfp8", "+ MXFP8", "grouped", "mxfp8"),
)
RUNGS = {rung.name: rung for rung in LADDER}


def expert_load_balance(model: torch.nn.Module, ids: torch.Tensor) -> float | None:
    """max / mean tokens per expert of the model's routing on `ids`, the worst MoE layer (1.0: even)."""
    config: Any = model.config
    with torch.no_grad():
        logits = model(ids, output_router_logits=True, use_cache=False).router_logits
    if not logits:
        return None
    experts = int(getattr(config, "num_local_experts", None) or config.num_experts)
    worst = 0.0
    for layer in logits:
        chosen = torch.topk(torch.softmax(layer.float(), dim=-1), config.num_experts_per_tok, dim=-1).indices
        counts = torch.bincount(chosen.reshape(-1), minlength=experts).double()
        worst = max(worst, float(counts.max() / counts.mean()))
    return worst


def run_ladder(source: str | PretrainedConfig, *, workload: str = "train", backend: str = "torch", device: str = "cpu",
               seq_len: int = 128, batch: int = 2, new_tokens: int = 8, rungs: tuple[str, ...] | None = None,
               policy: TimingPolicy | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One row per rung: step time, speedup over stock with its CI, load balance, memory estimate, or why not."""
    policy = policy or TimingPolicy(budget_s=5.0, min_samples=6, min_rounds=4)
    chosen = [RUNGS[name] for name in (rungs or tuple(RUNGS))]
    target = torch.device(device)
    config = resolve_source(source).config
    shape = ModelShape.from_config(config)
    timer = timer_for(target)
    ids = make_input_ids(config.vocab_size, batch, seq_len, seed=seed, device=target)
    rows: list[dict[str, Any]] = []
    for rung in chosen:
        side_backend = "stock" if rung.experts is None else backend
        name = source if isinstance(source, str) else f"{config.model_type}-config"
        cell = Cell(model=name, workload=workload, backend=side_backend, precision=rung.precision, seq_len=seq_len,
                    batch=batch, device=str(target), new_tokens=new_tokens if workload == "decode" else 0)
        estimate = estimate_cell(cell, shape)
        row: dict[str, Any] = {"rung": rung.name, "what": rung.what, "backend": side_backend, "device": str(target),
                               "precision": rung.precision, "workload": workload, "experts": rung.experts,
                               "memory_estimate": estimate.to_dict()}
        needed = 2 * estimate.total_bytes  # the baseline and the rung's model, both resident
        free = free_memory(target)
        if not fits(needed, free):
            rows.append({**row, "status": "skipped", "reason": f"needs ~{needed / GIB:.1f} GiB with the baseline "
                         f"({estimate.describe()} each); {free.bytes / GIB if free.bytes else 0:.1f} GiB free"})
            continue
        try:
            if rung.precision not in PRECISIONS:
                raise TeswapError(f"precision {rung.precision!r} is not one teswap runs yet "
                                  f"(known: {', '.join(PRECISIONS)})")
            require_precision(rung.precision, side_backend, target)
            row.update(_measure_rung(source, rung, cell, backend, target, ids, policy, timer, seed))
        except TeswapError as err:
            rows.append({**row, "status": "skipped", "reason": str(err).splitlines()[0]})
            continue
        rows.append({**row, "status": "ok"})
        gc.collect()
    return rows


def _measure_rung(source: str | PretrainedConfig, rung: Rung, cell: Cell, backend: str, device: torch.device,
                  ids: torch.Tensor, policy: TimingPolicy, timer: Any, seed: int) -> dict[str, Any]:
    dtype = torch.bfloat16 if rung.precision != "fp32" else torch.float32
    pair = build_pair(source, seed=seed, backend=backend, dtype=dtype, device=device,
                      experts=rung.experts or "hf")
    measured = pair.stock if rung.experts is None else pair.swapped
    balance = expert_load_balance(measured, ids)
    base_cell = Cell(model=cell.model, workload=cell.workload, backend="stock", precision="bf16",
                     seq_len=cell.seq_len, batch=cell.batch, device=cell.device, new_tokens=cell.new_tokens)
    steps = [prepare_step(cell.workload, model, ids, backend=side.backend, precision=side.precision,
                          new_tokens=cell.new_tokens) for model, side in ((pair.stock, base_cell), (measured, cell))]
    for step in steps:
        warm_up(step, policy.warmup, device)
    sides = [Side(cell=base_cell, step=steps[0]), Side(cell=cell, step=steps[1])]
    rounds = run_rounds(sides, policy, timer, clocks=ClockLog(meter=None, null_reason="not measured"), seed=seed)
    ratio = rounds.ratio()
    times = sorted(float(t) for block in rounds.samples[1] for t in block)
    median = times[len(times) // 2] if times else None
    return {"step_ms": None if median is None else 1e3 * median, "speedup": ratio.estimate if ratio else None,
            "speedup_ci": None if ratio is None or ratio.ci_low is None else (ratio.ci_low, ratio.ci_high),
            "rounds": rounds.count, "load_balance": balance, "timed": STEP_TIME}


def format_ladder(rows: list[dict[str, Any]]) -> str:
    """The ladder as TE's example prints it: one line per rung, step time and speedup over HF."""
    lines = [f"{'rung':16} {'':40} {'step ms':>9}  {'speedup [95% CI]':24} {'balance':>7}  backend/device"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"{row['rung']:16} {row['what']:40} skipped: {row['reason']}")
            continue
        ci = row["speedup_ci"]
        speed = f"{row['speedup']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else " [no CI]")
        balance = "-" if row["load_balance"] is None else f"{row['load_balance']:.2f}"
        lines.append(f"{row['rung']:16} {row['what']:40} {row['step_ms']:9.2f}  {speed:24} {balance:>7}  "
                     f"{row['backend']}/{row['device']} {row['precision']}")
    return "\n".join(lines)

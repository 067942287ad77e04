"""Run a sweep: build each pair once, time stock cells alone and swapped cells paired with stock, store each cell.

Pairing: every swapped cell is timed against its stock baseline (same model, workload, shape, model
dtype and the speed options stock can run) in interleaved rounds (runner.measure_cell with a
Baseline), so drift and noisy neighbours hit both; its record keeps both sides' samples per round and
the speedup's CI. The stock cells are also measured alone first, for their own tokens/s, memory and
energy. A swapped cell whose stock cell is not in the sweep, or did not finish ok, is timed alone
(its speedup is then unpaired).

Residency: pairs are kept in host memory and visit the device. A lone cell's model is the only one
there. A paired cell has both models there when twice the stock cell's peak fits (residency.py),
else they take turns block by block (not with cuda-graphs: a recorded graph keeps its weights'
addresses, so such a cell is then timed alone); either way the stock model leaves before the swapped
model's memory and energy are taken. A pair is built on the host, or (`build_on="device"`, the GPU
default: random init and weight checksums of an 8B model take minutes on a CPU) on the device and
offloaded at once, which needs room for both models during the build only. On a CPU device nothing
moves.

Durability and resume: each finished cell is appended to the results store (locked, fsynced) before
the next starts, with SIGINT/SIGTERM held off while it is written. A rerun of the same sweep on the
same commit and machine looks up which cells already have an ok/oom record and measures only the rest.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from teswap.benchmark.decode.options import decode_skip_reason
from teswap.benchmark.energy import idle_power_w
from teswap.benchmark.memory_estimate import estimate_build, estimate_cell, fits, refusal, shape_of
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell, SweepSpec, plan_cells, resolve_device
from teswap.benchmark.progress import NullProgress, Progress
from teswap.benchmark.records import bench_record, cell_key, finished_records, model_config_fields
from teswap.benchmark.residency import HOST, Placement, fits_together, move, offload, resident
from teswap.benchmark.runner import Baseline, CellContext, CellOutcome, first_line, measure_cell, unmeasured
from teswap.benchmark.signals import InterruptGuard, terminate_as_interrupt
from teswap.distributed.launch import Parallel
from teswap.distributed.sharding import shard_pair
from teswap.distributed.sync import RankFailure, RankSync
from teswap.errors import TeswapError
from teswap.hardware.free_memory import free_memory
from teswap.hardware.gpu_info import gpu_info
from teswap.hardware.nvml import NvmlError, PowerMeter, power_meter
from teswap.layers.backends import get_backend
from teswap.precision.runtime import emulated_timing_reason, require_precision
from teswap.precision.table import PRECISIONS, baseline_precision
from teswap.speed_options import option_names, stock_options
from teswap.store.provenance import Provenance
from teswap.store.runs import RunWriter, open_run
from teswap.swap.pair import Pair, build_pair
from teswap.swap.sources import resolve_source

CLOCK_REASONS = ("GPU", "SM clock")  # how the noise guard's clock reasons begin
ALTERNATING_BLOCK_STEPS = 3  # timed steps per block at least, when the two models take turns on the device


@dataclass(kw_only=True)
class SweepResult:
    """Every cell's record (this run's, or the finished one found in the store) and how the run ended."""

    cells: list[Cell]
    keys: list[str]  # each cell's resume key, in plan order
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell key -> record
    written: int = 0
    resumed: int = 0
    interrupted: bool = False
    run_path: Path | None = None
    notes: list[str] = field(default_factory=list)  # about the store (unreadable lines skipped on resume)
    warnings: list[str] = field(default_factory=list)  # noisy cells, unstable clocks (also shown as they happen)

    @property
    def missing(self) -> int:
        return len(self.cells) - len(self.records)


@dataclass(kw_only=True)
class _Sweep:
    spec: SweepSpec
    provenance: Provenance
    writer: RunWriter
    guard: InterruptGuard
    progress: Progress
    ctx: CellContext
    gpu: dict[str, Any]
    configs: dict[str, dict[str, Any]]  # model source -> record "model_config"
    result: SweepResult
    parallel: Parallel = field(default_factory=Parallel.single)
    launch: dict[str, Any] | None = None  # the records' "distributed" field (plan, mesh, ranks), multi-rank runs

    @property
    def ranks(self) -> RankSync:
        return self.ctx.ranks

    def key(self, cell: Cell) -> str:
        return _key(cell, self.configs, self.provenance)

    def write(self, cell: Cell, outcome: CellOutcome) -> None:
        record = bench_record(
            cell=cell, model_config=self.configs[cell.model], provenance=self.provenance, status=outcome.status,
            reason=outcome.reason, stats=outcome.stats.to_dict() if outcome.stats else None,
            metrics=outcome.metrics, gpu=self.gpu, settings=self.spec.settings(), paired=outcome.paired,
            noise=outcome.noise, clocks=outcome.clocks, decode=outcome.decode,
            distributed=None if self.launch is None else {**self.launch, **(outcome.ranks or {})},
        )
        with self.guard.deferred():  # a signal waits until the record is stored and counted
            self.result.records[record.cell_key] = self.writer.write(record)
            self.result.written += 1
            self.result.run_path = self.writer.path
        self.progress.advance(cell, outcome.status)
        if self.ranks.active and outcome.status in ("error", "oom"):  # peers may sit in a collective: stop
            rank, world = self.parallel.rank, self.parallel.world_size
            host = (self.launch or {}).get("ranks", [{}] * (rank + 1))[rank].get("host")
            raise RankFailure(f"rank {rank} of {world} ({host}) failed {cell.label()}: {outcome.reason}; the launch "
                              "stops, finished cells are kept: rerun the same command to resume")
        if outcome.noise and outcome.noise["noisy"]:
            reasons = outcome.noise["reasons"]
            clocks = any(reason.startswith(CLOCK_REASONS) for reason in reasons)
            self.warn(f"{cell.label()}: noisy after {outcome.noise['attempts']} tries: {'; '.join(reasons)}"
                      + ("; GPU clocks were not stable (bench/README.md, 'Locking clocks')" if clocks else ""))

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self.progress.warn(message)

    def write_all(self, cells: list[Cell], status: str, reason: str, metrics: dict[str, Any] | None = None) -> None:
        for cell in cells:
            outcome = unmeasured(status, reason, self.ctx)
            self.write(cell, replace(outcome, metrics={**outcome.metrics, **(metrics or {})}))

    def skip_reason(self, cell: Cell) -> str | None:
        if cell.backend != "stock":
            try:
                require_precision(cell.precision, cell.backend, cell.device)
            except TeswapError as err:
                return str(err)
            emulated = emulated_timing_reason(cell.precision, cell.backend)
            if emulated is not None:  # parity runs it (teswap check, run); timing it would mislabel a speed
                return emulated
        return decode_skip_reason(cell)

    def memory_check(self, cell: Cell) -> tuple[str | None, dict[str, Any]]:
        """Whether the cell's estimated peak fits the free memory now (its model is already on the device), and
        the estimate and free memory for its record. A paired cell's stock baseline keeps its optimizer state
        (and, on a GPU when both stay resident, its weights) beside it."""
        device = torch.device(cell.device)
        estimate = estimate_cell(cell, shape_of(self.configs[cell.model]))
        needed, held = estimate.total_bytes - estimate.weights_bytes, "its weights, already in memory"
        found = self.baseline_record(cell) if cell.backend != "stock" else None
        if found is not None and fits_together(device, found[1]["metrics"].get("peak_allocated_bytes")):
            stock = estimate_cell(found[0], shape_of(self.configs[cell.model]))
            needed += stock.optimizer_bytes + (stock.weights_bytes if device.type != "cpu" else 0)
            held += ", and its stock baseline's state beside it"
        free = free_memory(device)
        fields = {"estimated_peak_bytes": estimate.total_bytes, "estimated_peak": estimate.to_dict(),
                  "free_memory_bytes": free.bytes, "free_memory_method": free.method}
        return (None if fits(needed, free) else refusal(cell.label(), estimate, needed, free, held)), fields

    def run_cells(self, cells: list[Cell], measure_one: Callable[[Cell], CellOutcome]) -> None:
        """Each cell through `measure_one(cell)`, with the cooldown between cells and skips written."""
        for index, cell in enumerate(cells):
            if index and self.spec.cooldown_s:
                time.sleep(self.spec.cooldown_s)  # let clocks and temperature settle between cells
            reason = self.skip_reason(cell)
            too_big, memory = self.memory_check(cell)
            reason = self.ranks.first_reason(reason or too_big)  # one rank's refusal skips the cell on all
            outcome = unmeasured("skipped", reason, self.ctx) if reason else measure_one(cell)
            self.write(cell, replace(outcome, metrics={**outcome.metrics, **memory}))

    def baseline_record(self, cell: Cell) -> tuple[Cell, dict[str, Any]] | None:
        """The stock cell `cell` pairs with and its ok record; None when pairing is off or it has none."""
        stock = replace(cell, backend="stock", precision=baseline_precision(cell.precision),
                        options=stock_options(cell.options))
        if not self.spec.paired:
            return None
        record = self.result.records.get(self.key(stock))
        return (stock, record) if record and record["status"] == "ok" else None

    def measure_swapped(self, pair: Pair, cell: Cell, shape: ModelShape, device: torch.device) -> CellOutcome:
        """A swapped cell (already resident), paired with its stock baseline when it has one."""
        found = self.baseline_record(cell)
        if found is None:
            return measure_cell(cell, pair.swapped, shape, self.ctx)
        stock, record = found
        baseline = Baseline(cell=stock, model=pair.stock)
        if self.ranks.all(fits_together(device, record["metrics"].get("peak_allocated_bytes"))):
            with resident(pair.stock, device):
                return measure_cell(cell, pair.swapped, shape, self.ctx, baseline=baseline)
        if "cuda-graphs" in option_names(cell.options):  # a graph keeps its weights' addresses: no moves
            return measure_cell(cell, pair.swapped, shape, self.ctx)
        move(pair.swapped, HOST)  # they take turns: both start in host memory
        try:
            # every block moves a model in: one untimed step after the move, and blocks long enough to amortise it
            policy = replace(self.ctx.policy, block_warmup=max(1, self.ctx.policy.block_warmup),
                             block_steps=max(ALTERNATING_BLOCK_STEPS, self.ctx.policy.block_steps))
            ctx = replace(self.ctx, policy=policy)
            return measure_cell(cell, pair.swapped, shape, ctx, baseline=baseline,
                                placement=Placement.alternating(device))
        finally:
            move(pair.swapped, device)


def _build_plans(sweep: _Sweep, pending: list[Cell]) -> list[tuple[str, list[tuple[str, list[Cell]]]]]:
    """[(backend to build the pair with, [(role, cells)])]: stock cells ride on the first pair built."""
    stock = [c for c in pending if c.backend == "stock"]
    runnable = []
    for backend in dict.fromkeys(c.backend for c in pending if c.backend != "stock"):
        cells = [c for c in pending if c.backend == backend]
        availability = get_backend(backend).probe()
        if availability:
            runnable.append((backend, cells))
        else:
            sweep.write_all(cells, "skipped", f"backend {backend!r} is unavailable: {availability.reason}")
    plans: list[tuple[str, list[tuple[str, list[Cell]]]]] = []
    if stock:
        first_backend, first_cells = runnable.pop(0) if runnable else ("torch", [])
        plans.append((first_backend, [("stock", stock), ("swapped", first_cells)]))
    plans.extend((backend, [("swapped", cells)]) for backend, cells in runnable)
    return plans


def _build(sweep: _Sweep, model_source: str, backend: str, dtype: torch.dtype, device: torch.device) -> Pair:
    """The pair in host memory: built there, or built on the device (fast init) and offloaded."""
    build_device = device if sweep.spec.build_on == "device" else HOST
    pair = build_pair(model_source, seed=sweep.spec.seed, backend=backend, dtype=dtype, device=build_device)
    if sweep.parallel.sharded:  # both sides sharded by the plan, audited, on the device they run on
        return shard_pair(pair, sweep.parallel)
    if build_device.type != "cpu":
        offload(pair)
    return pair


def _run_roles(sweep: _Sweep, pair: Pair, roles: list[tuple[str, list[Cell]]], device: torch.device) -> None:
    """The stock cells alone on the stock model, then the swapped cells (each paired where it can be)."""
    shape = ModelShape.from_config(pair.config)
    for role, cells in roles:
        if not cells:
            continue
        with resident(getattr(pair, role), device) as model:
            if role == "stock":
                sweep.run_cells(cells, lambda cell: measure_cell(cell, model, shape, sweep.ctx))  # noqa: B023
            else:
                sweep.run_cells(cells, lambda cell: sweep.measure_swapped(pair, cell, shape, device))


def _build_refusal(sweep: _Sweep, model_source: str, dtype: torch.dtype) -> tuple[str | None, dict[str, Any]]:
    """Why the pair cannot be built here (stock, swapped and the mapped weights do not fit where it is built),
    and the estimate and free memory for the records of its cells."""
    build_on = resolve_device(sweep.spec.device) if sweep.spec.build_on == "device" else HOST
    estimate = estimate_build(shape_of(sweep.configs[model_source]), dtype)
    free = free_memory(build_on)
    fields = {"estimated_build_bytes": estimate.total_bytes, "free_memory_bytes": free.bytes,
              "free_memory_method": free.method}
    if fits(estimate.total_bytes, free):
        return None, fields
    what = (f"building the {model_source} pair ({str(dtype).removeprefix('torch.')}: stock, swapped and the weights "
            "mapped between them)")
    return refusal(what, estimate, estimate.total_bytes, free), fields


def _run_group(sweep: _Sweep, model_source: str, dtype: torch.dtype, pending: list[Cell]) -> None:
    device = resolve_device(sweep.spec.device)
    too_big, memory = _build_refusal(sweep, model_source, dtype)
    if too_big:  # the OS would kill the process mid-build: every cell of the group is skipped, saying why
        sweep.write_all(pending, "skipped", too_big, memory)
        return
    for backend, roles in _build_plans(sweep, pending):
        try:
            pair: Pair | None = _build(sweep, model_source, backend, dtype, device)
        except Exception as err:  # noqa: BLE001 - a pair that cannot be built fails its cells, not the sweep
            for _, cells in roles:
                sweep.write_all(cells, "error", f"building the pair failed: {first_line(err)}")
            continue
        assert pair is not None
        _run_roles(sweep, pair, roles, device)
        pair = None
        gc.collect()


def _measure_idle(meter: PowerMeter | None, reason: str | None, spec: SweepSpec) -> tuple[float | None, str | None]:
    if meter is None:
        return None, reason
    if spec.idle_s <= 0:
        return None, "idle baseline not measured (idle_s = 0)"
    try:
        return idle_power_w(meter, spec.idle_s), None
    except NvmlError as err:
        return None, str(err)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `count` for the block (None: unchanged), then restored."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _key(cell: Cell, configs: dict[str, dict[str, Any]], provenance: Provenance) -> str:
    return cell_key(cell.to_dict(), configs[cell.model], provenance.to_dict())


def _group(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (model, model dtype), in plan order."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, baseline_precision(cell.precision)), []).append(cell)
    return groups


def run_sweep(spec: SweepSpec, *, results_root: Path | str, provenance: Provenance, resume: bool = True,
              progress: Progress | None = None, run_id: str | None = None,
              parallel: Parallel | None = None) -> SweepResult:
    """Measure every cell of `spec` not already finished in the store; KeyboardInterrupt ends it cleanly.

    Under a torchrun launch (`parallel`), every rank runs the same cells in the same order with the pair
    sharded by the plan; the ranks agree on which cells are finished, which are skipped and where models
    sit, and a cell that fails on any rank stops the launch (RankFailure) after its record is written.
    """
    from teswap.distributed.provenance import amax_group_size, fp8_amax_group, gather_launch
    from teswap.precision.te_glue import amax_reduction_group

    parallel = parallel or Parallel.single(resolve_device(spec.device))
    launch = gather_launch(parallel, provenance, amax_group_size(parallel))
    provenance, run_id = launch.provenance, run_id or launch.run_id
    ranks = RankSync(parallel)
    cells = plan_cells(spec)
    configs = {model: model_config_fields(resolve_source(model).config) for model in dict.fromkeys(spec.models)}
    result = SweepResult(cells=cells, keys=[_key(c, configs, provenance) for c in cells])
    if resume:
        found, result.notes = finished_records(results_root, result.keys)
        agreed = set.intersection(*(set(keys) for keys in ranks.gather(sorted(found))))  # finished on every rank
        result.records.update({key: record for key, record in found.items() if key in agreed})
        result.resumed = len(result.records)
    progress = progress or NullProgress()
    device = resolve_device(spec.device)
    writer = open_run(results_root, provenance, run_id)
    progress.start(len(cells), result.resumed)
    with terminate_as_interrupt() as guard, torch_threads(spec.threads), power_meter(device) as (meter, meter_reason), \
            amax_reduction_group(fp8_amax_group(parallel)):
        try:
            idle, idle_reason = _measure_idle(meter, meter_reason, spec)
            ctx = CellContext(policy=spec.policy, noise=spec.noise, seed=spec.seed, meter=meter,
                              energy_null_reason=meter_reason,
                              min_energy_window_s=spec.min_energy_window_s, sample_interval_s=spec.sample_interval_s,
                              idle_power_w=idle, idle_power_null_reason=idle_reason, ranks=ranks)
            sweep = _Sweep(spec=spec, provenance=provenance, writer=writer, guard=guard, progress=progress, ctx=ctx,
                           gpu=gpu_info(device), configs=configs, result=result, parallel=parallel,
                           launch=launch.fields)
            for (model_source, dtype), group in _group(cells).items():
                pending = [c for c in group if sweep.key(c) not in result.records]
                if pending:
                    _run_group(sweep, model_source, PRECISIONS[dtype].model_dtype, pending)
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            progress.close()
    return result

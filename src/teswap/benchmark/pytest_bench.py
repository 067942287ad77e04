"""pytest-benchmark glue: a cell as a pedantic benchmark, machine info for its JSON, JSON -> records.

`run_benchmark_cell` times the same workload step the sweep times, through the same `measure()`, with
`benchmark.pedantic` over a device-synchronised target as its timing; given a stock baseline, each
pedantic round also times one stock step in its setup, so the cell is paired (AB rounds) and carries
the speedup's CI. It puts tokens/s, the speedup, memory and energy in `extra_info` (plus everything
a record needs under `extra_info["teswap"]`).
`update_machine_info` adds the GPU, driver, CUDA and TE fields and teswap's full provenance to
pytest-benchmark's machine_info, so `records_from_benchmark_json` can turn a `--benchmark-json` file
into "bench" records with the provenance of the machine that ran it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from teswap.benchmark.clocks import ClockLog
from teswap.benchmark.errors import BenchConfigError
from teswap.benchmark.memory import MemoryTracker
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.noise import NoisePolicy
from teswap.benchmark.plan import Cell, resolve_device
from teswap.benchmark.records import bench_record, model_config_fields
from teswap.benchmark.residency import Placement, hooks_for
from teswap.benchmark.rounds import Rounds, Side
from teswap.benchmark.runner import Baseline, CellContext, TimeRounds, measure
from teswap.benchmark.timing import TimingPolicy, synchronize, timer_for
from teswap.benchmark.workloads import STEP_TIME, make_input_ids, prepare_step, release
from teswap.hardware.gpu_info import gpu_info
from teswap.hardware.nvml import power_meter
from teswap.hardware.probe import default_device
from teswap.store.provenance import Provenance, capture_provenance
from teswap.store.records import BenchRecord

PYTEST_TIMER = "pytest-benchmark(perf_counter around a device-synchronised target)"


def machine_info_extras(device: torch.device | None = None) -> dict[str, Any]:
    """GPU/driver/CUDA/TE fields and teswap's provenance, for pytest-benchmark's machine_info."""
    gpu = gpu_info(device or resolve_device(default_device()))
    return {
        "gpu": gpu, "gpu_name": gpu["name"], "gpu_uuid": gpu["uuid"], "driver_version": gpu["driver_version"],
        "cuda_runtime": torch.version.cuda, "cuda_driver_version": gpu["cuda_driver_version"],
        "compute_capability": gpu["compute_capability"], "transformer_engine": gpu["transformer_engine"],
        "torch": torch.__version__, "teswap_provenance": capture_provenance().to_dict(),
    }


def update_machine_info(machine_info: dict[str, Any], device: torch.device | None = None) -> None:
    """Body of the `pytest_benchmark_update_machine_info` hook."""
    machine_info.update(machine_info_extras(device))


def pedantic_rounds(benchmark: Any, rounds: int, device: torch.device) -> TimeRounds:
    """Timing through pytest-benchmark: `rounds` pedantic rounds of a device-synchronised step (none
    under --benchmark-disable, where the step runs once, untimed). With a baseline side, each round first
    times one baseline step in pedantic's untimed `setup` (our timer), then the measured step: AB rounds,
    as pedantic always runs its setup first."""
    def time_rounds(sides: Sequence[Side], clocks: ClockLog) -> Rounds:
        measured = sides[-1]
        timer = timer_for(device)
        baseline_s: list[float] = []

        def target() -> None:  # synchronised, so pytest-benchmark's wall clock covers the device work
            measured.step()
            synchronize(device)

        def setup() -> None:
            baseline_s.append(timer.time(sides[0].step))

        benchmark.pedantic(target, setup=setup if len(sides) == 2 else None, rounds=rounds, warmup_rounds=0,
                           iterations=1)
        clocks.read()
        timed = Rounds(sides=len(sides), order="ab" if len(sides) == 2 else "single", block_steps=1, clocks=clocks,
                       stop_reason="fixed_rounds", timer=PYTEST_TIMER)
        data = [float(s) for s in benchmark.stats.stats.data] if benchmark.stats else []
        for index, duration in enumerate(data):
            if len(sides) == 2:
                timed.add(0, index, [{STEP_TIME: baseline_s[index]}])
            timed.add(len(sides) - 1, index, [{STEP_TIME: duration}])
        return timed

    return time_rounds


def run_benchmark_cell(benchmark: Any, cell: Cell, model: PreTrainedModel, *, rounds: int, warmup: int = 3,
                       seed: int = 0, min_energy_window_s: float = 0.0,
                       baseline: Baseline | None = None) -> dict[str, Any]:
    """Time `cell` on `model` with benchmark.pedantic, paired with `baseline` (a stock cell and its model,
    on the same device) when given; returns (and stores in extra_info) its figures."""
    device = torch.device(cell.device)
    shape = ModelShape.from_config(model.config)
    ids = make_input_ids(shape.vocab_size, cell.batch, cell.seq_len, seed=seed, device=device)
    sides = [Side(cell=cell, step=prepare_step(cell.workload, model, ids, backend=cell.backend,
                                               precision=cell.precision))]
    if baseline is not None:  # it leaves the device after the rounds, so memory and energy are the cell's own
        step = prepare_step(baseline.cell.workload, baseline.model, ids, backend="stock",
                            precision=baseline.cell.precision)
        hooks = hooks_for(Placement.resident(device).as_baseline(), baseline.model, step)
        sides.insert(0, Side(cell=baseline.cell, step=step, **hooks))
    try:
        with power_meter(device) as (meter, reason):
            # remeasure=0: the benchmark fixture times once per test
            ctx = CellContext(policy=TimingPolicy(warmup=warmup), noise=NoisePolicy(remeasure=0), seed=seed,
                              meter=meter, energy_null_reason=reason, min_energy_window_s=min_energy_window_s,
                              idle_power_null_reason="no idle baseline in pytest runs")
            outcome = measure(sides, shape, ctx, MemoryTracker(device), pedantic_rounds(benchmark, rounds, device))
    finally:
        for side in sides:
            release(side.step)
    metrics = outcome.metrics
    info = {
        "tokens_per_s": metrics["tokens_per_s"], "peak_allocated_bytes": metrics["peak_allocated_bytes"],
        "peak_reserved_bytes": metrics["peak_reserved_bytes"], "energy_per_token_j": metrics["energy_per_token_j"],
        "power_avg_w": metrics["power_avg_w"], "energy_null_reason": metrics["energy_null_reason"],
        "speedup": outcome.paired["speedup"] if outcome.paired else None,
        "teswap": {"cell": cell.to_dict(), "model_config": model_config_fields(model.config), "metrics": metrics,
                   "warmup": warmup, "gpu": gpu_info(device), "paired": outcome.paired, "noise": outcome.noise,
                   "clocks": outcome.clocks},
    }
    benchmark.extra_info.update(info)
    return info


def _provenance_from(machine_info: dict[str, Any]) -> Provenance:
    saved = machine_info.get("teswap_provenance")
    if not isinstance(saved, dict):
        raise BenchConfigError("this benchmark JSON has no machine_info.teswap_provenance: it was not written by "
                               "teswap's bench suite (run `pytest bench/ --benchmark-json=FILE`)")
    return Provenance.from_dict(saved)


def _stats_from(stats: dict[str, Any], warmup: int) -> dict[str, Any]:
    return {"median_s": stats["median"], "iqr_s": stats["iqr"], "mean_s": stats["mean"], "std_s": stats["stddev"],
            "min_s": stats["min"], "count": stats["rounds"], "warmup": warmup, "samples_s": stats.get("data", []),
            "ci_low_s": None, "ci_high_s": None, "stop_reason": "fixed_rounds", "timer": PYTEST_TIMER}


def records_from_benchmark_json(data: dict[str, Any]) -> tuple[Provenance, list[BenchRecord]]:
    """The provenance and the bench record of each teswap benchmark in a --benchmark-json dict."""
    provenance = _provenance_from(data.get("machine_info", {}))
    out = []
    for bench in data.get("benchmarks", []):
        ours = bench.get("extra_info", {}).get("teswap")
        if not ours or not bench.get("stats"):
            continue  # not one of our cells, or run with --benchmark-disable
        out.append(bench_record(
            cell=Cell(**ours["cell"]), model_config=ours["model_config"], provenance=provenance, status="ok",
            reason=None, stats=_stats_from(bench["stats"], ours["warmup"]), metrics=ours["metrics"], gpu=ours["gpu"],
            paired=ours.get("paired"), noise=ours.get("noise"), clocks=ours.get("clocks"),
            settings={"source": "pytest-benchmark", "benchmark": bench.get("fullname"),
                      "pytest_benchmark_version": data.get("version"), "datetime": data.get("datetime")},
        ))
    return provenance, out


def load_benchmark_json(path: Path | str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise BenchConfigError(f"cannot read benchmark JSON {path}: {err}") from None

"""`teswap run`, the main job: environment, parity at every precision the hardware runs, the benchmark
sweep, everything appended to the results store, then the published table and charts.

`plan_run` picks the best setup for the machine and says what it picked and why: on a CPU the tiny
preset with the `torch` backend; on a GPU with TE an 8B-shaped sweep with `te` and the `torch` FP8
twin beside it (parity on the Llama-3.2-1B shape, whose fp32 reference and gradients fit beside the
pair); on a GPU without TE the `torch` backend with real FP8 GEMMs. Flags override every choice. The
plan holds the library's own objects (parity cases, a SweepSpec); `run_job` executes it, appending
each stage to the store as it goes, so an interrupt keeps everything already measured.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from teswap.benchmark.plan import SweepSpec, default_spec, describe, plan_cells, resolve_device
from teswap.errors import SourceError, TeswapError
from teswap.hardware.probe import Availability, default_device, probe_te
from teswap.layers.backends import get_backend
from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.parity.text import summary_header, summary_row
from teswap.precision.runtime import precision_availability
from teswap.precision.table import PRECISIONS, get_precision
from teswap.store.provenance import Provenance, capture_provenance
from teswap.store.records import ParityRecord
from teswap.store.runs import RunWriter, machine_slug, open_run
from teswap.swap.checkpoints import smollm2_gguf
from teswap.swap.pair import Pair, build_pair
from teswap.swap.sources import resolve_source


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What `teswap run` will do, and why each default was chosen."""

    device: str
    backends: tuple[str, ...]  # swapped backends; the sweep adds the stock model
    precisions: tuple[str, ...]
    parity: ParityCase  # the parity case of every backend and precision, but for those two
    sweep: SweepSpec
    sweep_why: str
    results: Path
    reasons: list[str] = field(default_factory=list)

    @property
    def parity_model(self) -> str:
        return self.parity.source_name

    def describe(self) -> str:
        return (f"device={self.device} parity model={self.parity_model} bench model={','.join(self.sweep.models)} "
                f"backends={','.join(self.backends)} precisions={','.join(self.precisions)} results={self.results}"
                f"\n  why: {'; '.join(self.reasons)}")

    def parity_cases(self) -> Iterator[tuple[ParityCase, Availability]]:
        """Every parity case of the plan, with whether its backend and precision can run here."""
        for backend in self.backends:
            for precision in self.precisions:
                case = replace(self.parity, backend=backend, precision=precision)
                yield case, precision_availability(precision, backend, self.device)


def plan_run(*, model: str | None, backend: str | None, precisions: list[str] | None, seq_lens: list[int] | None,
             batches: list[int] | None, device: str | None, results: Path,
             beyond_max_positions: bool = False) -> RunPlan:
    """Defaults by hardware, each with its reason; flags override. Bad names fail here, before any work."""
    reasons: list[str] = []
    device = device or default_device()
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise TeswapError(f"--device {device}: no CUDA device here")
    backends = _backends(backend, on_gpu, reasons)
    sweep, sweep_why = default_spec(resolve_device(device), te_available=bool(probe_te()))
    parity = _parity_case(model, on_gpu, device, reasons)
    precisions = _precisions(precisions, on_gpu, reasons)
    # FP8 emulation speed on a CPU says nothing about FP8: the CPU sweep times fp32 only.
    timed = [p for p in precisions if on_gpu or p == "fp32"] or ["fp32"]
    sweep = sweep.overriding(models=[model] if model else None, backends=("stock", *backends), precisions=timed,
                             seq_lens=seq_lens, batches=batches, beyond_max_positions=beyond_max_positions or None)
    for source in {parity.source_name, *sweep.models}:
        resolve_source(source)
    plan_cells(sweep)  # a sequence past a model's positions is refused here, before any work
    return RunPlan(device=device, backends=backends, precisions=tuple(precisions), parity=parity, sweep=sweep,
                   sweep_why=sweep_why, results=results, reasons=reasons)


# The trained model checked on a CPU: short real-text inputs; the four precisions take about two minutes on
# 2 cores (bf16 and the FP8 recipes share one pair and one fp32 reference run).
CPU_REAL_PARITY: dict[str, Any] = dict(seq_len=64, batch=2, batches=2, gen_prompts=16, gen_tokens=12)
GPU_PARITY: dict[str, Any] = dict(seq_len=2048, batch=1)


def _parity_case(model: str | None, on_gpu: bool, device: str, reasons: list[str]) -> ParityCase:
    """The parity case template: the model asked for, else a real trained model where there is one."""
    if model is not None:
        return ParityCase(source=model, device=device, **(GPU_PARITY if on_gpu else {}))
    if on_gpu:
        reasons.append("GPU: parity on the llama3.2-1b shape, sweep on the llama3-8b shape")
        return ParityCase(source="llama3.2-1b", device=device, **GPU_PARITY)
    try:
        smollm2_gguf()
    except SourceError as err:
        reasons.append(f"CPU: parity on the tiny preset (random weights): {err}")
        return ParityCase(source="tiny", device=device)
    reasons.append("CPU: parity on SmolLM2-135M (trained, real text), the sweep on the tiny preset")
    return ParityCase(source="smollm2-135m", device=device, **CPU_REAL_PARITY)


def _backends(backend: str | None, on_gpu: bool, reasons: list[str]) -> tuple[str, ...]:
    te = probe_te()
    if backend is not None:
        get_backend(backend).require()  # asked for by name: unavailable is an error, not a skip
        return (backend,)
    if on_gpu and te:
        reasons.append("TE available: te backend, with the torch FP8 twin beside it")
        return ("te", "torch")
    reasons.append("torch backend" + ("" if on_gpu else " (no GPU)") + ("" if te else f"; te unavailable: {te.reason}"))
    return ("torch",)


def _precisions(precisions: list[str] | None, on_gpu: bool, reasons: list[str]) -> list[str]:
    if precisions is None:
        base = "bf16" if on_gpu else "fp32"
        reasons.append(f"precisions: {base} and every FP8 recipe; those this hardware cannot run are "
                       "recorded as skipped")
        return [base, *(p for p in PRECISIONS if p != base and (p != "fp32" or not on_gpu))]
    for name in precisions:
        get_precision(name)  # an unknown name is one line and exit 2
    return precisions


def run_job(plan: RunPlan, *, bench: bool = True) -> int:
    """0 when every parity case that ran passed and no benchmark cell errored; 1 otherwise; 130 interrupted."""
    provenance = capture_provenance()
    print(f"teswap run: {plan.describe()}")
    _print_environment(provenance)
    writer = open_run(plan.results, provenance)
    parity_ok = _run_parity(plan, writer)
    bench_code = _run_bench(plan, provenance, writer.run_id) if bench else 0
    if bench_code == 130:
        return 130
    if bench:  # the published table is per benchmark cell, with the parity verdict beside it
        _report(plan, provenance)
    return 0 if parity_ok and bench_code == 0 else 1


def _print_environment(provenance: Provenance) -> None:
    machine, libs = provenance.machine, provenance.libraries
    device = f"{machine.gpu_name} (SM {machine.compute_capability}, driver {machine.driver_version})" \
        if machine.gpu_name else f"{machine.cpu_model}, {machine.cpu_cores} cores, no GPU"
    print(f"environment: {device}; torch {libs.torch}, transformers {libs.transformers}, "
          f"transformer_engine {libs.transformer_engine or 'not installed'}; commit "
          f"{(provenance.git.sha or 'none')[:7]}{'-dirty' if provenance.git.dirty else ''}")


def _run_parity(plan: RunPlan, writer: RunWriter) -> bool:
    case = plan.parity
    print(f"\nparity ({plan.parity_model}, {case.batches} batches of {case.batch} x {case.seq_len} tokens, "
          f"{case.gen_prompts} prompts x {case.gen_tokens} greedy tokens; both models against a reference run of "
          "stock; swap: the same model as stock? precision: fit for this model?)")
    print(summary_header())
    all_passed, pairs = True, PairCache()
    for case, availability in plan.parity_cases():
        if not availability:
            writer.write(ParityRecord.skipped(case.as_dict(), availability.reason))
            print(f"  {case.backend:8} {case.precision:12} {'skipped':6} {availability.reason}")
            continue
        report = run_parity_case(case, pair=pairs.pair_for(case), references=pairs.references)
        writer.write(report.record())
        all_passed &= report.passed
        print(summary_row(report))
    return all_passed


class PairCache:
    """One pair per (backend, model dtype): bf16 and the FP8 recipes share bf16 weights, and its reference runs."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.pair: Pair | None = None
        self.references = ReferenceCache()

    def pair_for(self, case: ParityCase) -> Pair:
        dtype = get_precision(case.precision).model_dtype
        key = (case.source_name, case.backend, dtype, case.fuse_qkv)
        if key != self.key:
            self.pair = None  # one pair (and its reference) in memory at a time
            self.references.clear()
            self.pair = build_pair(case.source, seed=case.seed, backend=case.backend, dtype=dtype,
                                   device=case.device, fuse_qkv=case.fuse_qkv)
            self.key = key
        assert self.pair is not None
        return self.pair


def _run_bench(plan: RunPlan, provenance: Provenance, run_id: str) -> int:
    from teswap.benchmark.progress import TqdmProgress
    from teswap.benchmark.summary import summary_legend, summary_table
    from teswap.benchmark.sweep import run_sweep

    spec = plan.sweep
    print(f"\nbenchmarks: {describe(spec)}")
    result = run_sweep(spec, results_root=plan.results, provenance=provenance, progress=TqdmProgress(),
                       run_id=f"{run_id}-bench")
    records = [result.records[key] for key in result.keys if key in result.records]
    print(summary_table(records))
    print(summary_legend(records))
    if result.interrupted:
        print(f"teswap run: interrupted; rerun to measure the {result.missing} missing cells", file=sys.stderr)
        return 130
    return 1 if any(r["status"] == "error" for r in records) else 0


def _report(plan: RunPlan, provenance: Provenance) -> None:
    from teswap.reporting.frame import load_frame_noting
    from teswap.reporting.publish import render, sections, write_charts, write_tables

    frame, notes = load_frame_noting(plan.results)  # a torn last line is skipped and named, as `teswap report` does
    for note in notes:
        print(f"teswap: warning: {note}", file=sys.stderr)
    parts = sections(frame, machine=machine_slug(provenance), sha=provenance.git.sha)
    out = plan.results / "report"
    written = write_tables(parts, out, notes=notes)
    for part in parts:
        written += [p for _, paths in write_charts(part, out / "charts") for p in paths]
    print("\n" + render(parts, "md", notes))
    print(f"report: {out}/ ({len(written)} files: tables as md/html/csv/tex, charts as png/svg)")

"""Running the plan: parity first (every case the sweep's figures will stand beside), then the sweep, each
record appended to the store as it is made (an interrupt keeps everything already measured), then the
published tables and charts, a torn last line of the store named under them."""

from __future__ import annotations

import os
import sys

import torch

from teswap.benchmark.plan import describe
from teswap.benchmark.sweep import torch_threads
from teswap.distributed.launch import Parallel
from teswap.job.plan import RunPlan
from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.parity.text import summary_header, summary_row
from teswap.precision.table import get_precision
from teswap.store.provenance import Provenance, capture_provenance
from teswap.store.records import ParityRecord
from teswap.store.runs import RunWriter, machine_slug, open_run
from teswap.swap.pair import Pair, build_pair


def run_job(plan: RunPlan, *, bench: bool = True, parallel: Parallel | None = None) -> int:
    """0 when every parity case that ran passed and no benchmark cell errored; 1 otherwise; 130 interrupted.

    Under a torchrun launch (`parallel`): replicas run the full check of whole pairs on every rank (rank 0 stores
    it); sharded plans the sharded check of each planned model, backend and model dtype
    (teswap.distributed.parity: plan exact, swap under sharding; rank 0 stores it). The sweep runs
    on every rank with the pair sharded by the plan, and rank 0 renders the report."""
    provenance = capture_provenance()
    launch = f"--parallel {parallel.plan} on {parallel.world_size} ranks" if parallel else ""
    print(f"teswap run: {plan.describe(launch)}")
    _print_environment(provenance)
    run_id = None
    if parallel is not None:  # rank 0's run id on every rank: the parity file and the sweep's ranks share it
        from teswap.distributed.provenance import gather_launch

        shared = gather_launch(parallel, provenance)
        provenance, run_id = shared.provenance, shared.run_id
    writer = open_run(plan.results, provenance, run_id)
    if parallel is None or parallel.plan == "replicas":  # whole pairs: the full check, every rank the same work
        parity_ok = _run_parity(plan, writer if parallel is None or parallel.rank == 0 else None)
    else:
        parity_ok = _run_sharded_parity(plan, parallel, writer)
    bench_code = _run_bench(plan, provenance, writer.run_id, parallel) if bench else 0
    if bench_code == 130:
        return 130
    if bench and (parallel is None or parallel.rank == 0):  # the published table, with parity beside each cell
        _report(plan, provenance)
    return 0 if parity_ok and bench_code == 0 else 1


def _print_environment(provenance: Provenance) -> None:
    machine, libs = provenance.machine, provenance.libraries
    device = f"{machine.gpu_name} (SM {machine.compute_capability}, driver {machine.driver_version})" \
        if machine.gpu_name else f"{machine.cpu_model}, {machine.cpu_cores} cores, no GPU"
    print(f"environment: {device}; torch {libs.torch}, transformers {libs.transformers}, "
          f"transformer_engine {libs.transformer_engine or 'not installed'}; commit "
          f"{(provenance.git.sha or 'none')[:7]}{'-dirty' if provenance.git.dirty else ''}")


def _run_parity(plan: RunPlan, writer: RunWriter | None) -> bool:
    """Every planned case, in order (each model's pair built once per dtype); skipped ones recorded with why
    (`writer` None: checked, not stored, as on the ranks of a replicas launch other than 0)."""
    threads = parity_threads(plan.device)
    if threads is not None:
        print(f"\nparity threads: {threads} of {os.cpu_count()} cores (1-min load {os.getloadavg()[0]:.1f})")
    with torch_threads(threads):
        return _run_cases(plan, writer)


def parity_threads(device: str) -> int | None:
    """torch's intra-op threads for parity on a CPU: the cores other processes leave free, at least one. OpenMP's
    barriers stall every parallel op while one of its threads waits for a core that is taken: on a 2-core
    machine shared with busy neighbours the job's parity took 590 s at 2 threads, 193 s at 1. None on a GPU."""
    if torch.device(device).type != "cpu":
        return None
    free_cores = (os.cpu_count() or 1) - round(os.getloadavg()[0])
    return max(1, min(torch.get_num_threads(), free_cores))


def _run_cases(plan: RunPlan, writer: RunWriter | None) -> bool:
    all_passed, pairs, model = True, PairCache(), None
    for planned in plan.parity:
        case = planned.case
        if case.source_name != model:
            model = case.source_name
            print(_parity_header(case))
            print(summary_header())
        if planned.skip:
            if writer is not None:
                writer.write(ParityRecord.skipped(case.as_dict(), planned.skip))
            print(f"  {case.backend:8} {case.precision:12} {'skipped':6} {planned.skip}")
            continue
        report = run_parity_case(case, pair=pairs.pair_for(case), references=pairs.references)
        if writer is not None:
            writer.write(report.record())
        all_passed &= report.passed
        print(summary_row(report))
    return all_passed


def _parity_header(case: ParityCase) -> str:
    stands = f", standing in for {case.stands_for}" if case.stands_for else ""
    grads = "" if case.grads else "; no gradient comparison (it would not fit)"
    return (f"\nparity ({case.source_name}{stands}, {case.batches} batches of {case.batch} x {case.seq_len} tokens, "
            f"{case.gen_prompts} prompts x {case.gen_tokens} greedy tokens{grads}; both models against a reference "
            "run of stock; swap: the same model as stock? precision: fit for this model?)")


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


def _run_sharded_parity(plan: RunPlan, parallel: Parallel, writer: RunWriter) -> bool:
    """The sharded check once per planned model, backend and model dtype; rank 0 stores a parity record for each
    planned case (its rows are the worst over the ranks), so every speed the sweep publishes has a verdict beside
    it. FP8 cases are stored as skipped, with why."""
    from teswap.distributed.parity import FP8_UNDER_SHARDING, ShardedParity, check_sharded, skipped_record

    passed = True
    results: dict[tuple, ShardedParity] = {}
    for planned in plan.parity:
        case = planned.case
        precision = get_precision(case.precision)
        seq_len = min(case.seq_len, 64)
        stored = {"model": case.source_name, "backend": case.backend, "precision": case.precision,
                  "device": str(parallel.device), "seq_len": seq_len, "batch": case.batch, "seed": case.seed,
                  **({"stands_for": case.stands_for} if case.stands_for else {})}
        skip = planned.skip or (FP8_UNDER_SHARDING if precision.is_fp8 else None)
        if skip:
            print(f"  {case.backend:8} {case.precision:12} skipped: {skip}")
            if parallel.rank == 0:
                writer.write(skipped_record(stored, parallel, skip))
            continue
        key = (case.source_name, case.backend, precision.model_dtype)
        if key not in results:
            results[key] = check_sharded(case.source, parallel=parallel, backend=case.backend,
                                         precision=case.precision, seq_len=seq_len, batch=case.batch, seed=case.seed)
            print(f"\n{case.source_name} {case.backend}/{case.precision}: {results[key].text()}")
        if parallel.rank == 0:
            writer.write(results[key].record(stored))
        passed &= results[key].passed
    return passed


def _run_bench(plan: RunPlan, provenance: Provenance, run_id: str, parallel: Parallel | None = None) -> int:
    from teswap.benchmark.progress import NullProgress, TqdmProgress
    from teswap.benchmark.summary import summary_legend, summary_table
    from teswap.benchmark.sweep import run_sweep

    spec = plan.sweep
    print(f"\nbenchmarks: {describe(spec)}")
    progress = TqdmProgress() if parallel is None or parallel.rank == 0 else NullProgress()
    result = run_sweep(spec, results_root=plan.results, provenance=provenance, progress=progress,
                       run_id=f"{run_id}-bench", parallel=parallel)
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

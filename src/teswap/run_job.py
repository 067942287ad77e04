"""Executes a RunPlan: environment, parity cases, the benchmark sweep, the report. Each stage appends to
the results store as it goes, so an interrupt keeps everything already measured."""

from __future__ import annotations

import math
import sys

from teswap.parity.case import ParityCase, ParityReport, run_parity_case, skipped_record_fields
from teswap.store.provenance import Provenance, capture_provenance
from teswap.run import RunPlan, parity_cases
from teswap.store.runs import RunWriter, open_run


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
    batch, seq_len = plan.parity_shape
    print(f"\nparity ({plan.parity_model}, batch {batch}, seq {seq_len}; each against a "
          f"{'fp64' if plan.device == 'cpu' else 'fp32'} reference run of the stock model)")
    print(f"  {'backend':8} {'precision':12} {'verdict':8} {'rel err swapped/stock':>22} {'SQNR dB':>8} "
          f"{'KL':>9} {'top-1':>6} {'grad err':>9}  first diverging layer")
    all_passed = True
    for backend, precision, availability in parity_cases(plan):
        case = ParityCase(source=plan.parity_model, backend=backend, precision=precision, batch=batch,
                          seq_len=seq_len, device=plan.device)
        if not availability:
            writer.append("parity", skipped_record_fields(case, availability.reason))
            print(f"  {backend:8} {precision:12} {'skipped':8} {availability.reason}")
            continue
        report = run_parity_case(case)
        writer.append("parity", report.record_fields())
        all_passed &= report.passed
        print(_parity_row(report))
    return all_passed


def _parity_row(report: ParityReport) -> str:
    s, k = report.swapped, report.stock
    layer = "none" if report.first_divergent_layer is None else str(report.first_divergent_layer)
    verdict = "PASS" if report.passed else "FAIL"
    return (f"  {report.case.backend:8} {report.case.precision:12} {verdict:8} "
            f"{s['robust_rel']:>10.2e} /{k['robust_rel']:>10.2e} {_num(s['sqnr_db']):>8} {s['kl_div']:>9.1e} "
            f"{s['top1_agreement']:>6.3f} {s.get('grad_rel_norm_error', math.nan):>9.2e}  {layer}")


def _num(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else str(value)


def _run_bench(plan: RunPlan, provenance: Provenance, run_id: str) -> int:
    from teswap.benchmark.summary import summary_table
    from teswap.benchmark.sweep import run_sweep
    from teswap.cli import Parser
    from teswap.commands.bench import TqdmProgress, add_arguments, build_spec

    parser = Parser(prog="teswap run")
    add_arguments(parser)
    args = parser.parse_args(_bench_argv(plan))
    spec, why = build_spec(args)
    print(f"\nbenchmarks ({why}; {', '.join(spec.backends)} x {', '.join(spec.precisions)})")
    result = run_sweep(spec, results_root=plan.results, provenance=provenance, progress=TqdmProgress(),
                       run_id=f"{run_id}-bench")
    records = [result.records[key] for key in result.keys if key in result.records]
    print(summary_table(records))
    if result.interrupted:
        print(f"teswap run: interrupted; rerun to measure the {result.missing} missing cells", file=sys.stderr)
        return 130
    return 1 if any(r["status"] == "error" for r in records) else 0


def _bench_argv(plan: RunPlan) -> list[str]:
    argv = ["--models", plan.bench_model, "--backends", ",".join(("stock", *plan.backends)), "--device", plan.device]
    on_cpu = plan.device == "cpu"
    precisions = [p for p in plan.precisions if not on_cpu or p == "fp32"]  # FP8 emulation speed on a CPU says nothing
    argv += ["--precisions", ",".join(precisions or ["fp32"])]
    if plan.seq_lens:
        argv += ["--seq-lens", ",".join(map(str, plan.seq_lens))]
    if plan.batches:
        argv += ["--batches", ",".join(map(str, plan.batches))]
    return argv


def _report(plan: RunPlan, provenance: Provenance) -> None:
    from teswap.reporting.frame import load_frame
    from teswap.reporting.publish import render, sections, write_charts, write_tables
    from teswap.store.runs import machine_slug

    frame = load_frame(plan.results)
    parts = sections(frame, machine=machine_slug(provenance), sha=provenance.git.sha)
    out = plan.results / "report"
    written = write_tables(parts, out)
    for part in parts:
        written += [p for _, paths in write_charts(part, out / "charts") for p in paths]
    print("\n" + render(parts, "md"))
    print(f"report: {out}/ ({len(written)} files: tables as md/html/csv/tex, charts as png/svg)")



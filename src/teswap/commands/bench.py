"""`teswap bench`: tokens/s, peak memory, energy and MFU of stock vs swapped, over a sweep of cells."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any

from teswap.commands.args import (
    add_parallel_arguments,
    int_list,
    name_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from teswap.errors import TeswapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `teswap bench`; unset ones take the defaults for this hardware."""
    sweep = parser.add_argument_group("sweep (defaults by hardware: tiny/fp32 on CPU, llama3-8b/bf16+FP8 on GPU)")
    sweep.add_argument("--models", "--model", type=name_list, help="presets or local directories, comma-separated")
    sweep.add_argument("--workloads", "--workload", type=name_list,
                       help="prefill,train,decode (default: prefill,train on CPU, all three on GPU)")
    sweep.add_argument("--backends", "--backend", type=name_list, help="stock,torch,te")
    sweep.add_argument("--precisions", "--precision", type=name_list,
                       help="fp32,bf16,fp8-delayed,fp8-current,fp8-block,mxfp8 (stock runs at the model dtype)")
    sweep.add_argument("--seq-lens", type=int_list, help="e.g. 512,1024,2048 (decode: prompt lengths)")
    sweep.add_argument("--new-tokens", type=int_list,
                       help="decode: tokens generated after each prompt, >= 2 (default 16 on CPU, 128 on GPU)")
    sweep.add_argument("--options", type=name_list, metavar="SETS",
                       help="decode speed option sets, each a cell variant: none, cuda-graphs, fp8-weights, "
                            "combined with + (e.g. none,cuda-graphs,cuda-graphs+fp8-weights)")
    sweep.add_argument("--batches", "--batch", type=int_list, help="e.g. 1,2")
    sweep.add_argument("--device", help="cpu or cuda[:N] (default: cuda if present)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--threads", type=positive_int,
                       help="torch intra-op threads during the sweep (default: 1 on CPU, torch's own on GPU)")
    sweep.add_argument("--build-on", choices=("host", "device"),
                       help="build each pair in host memory, or on the device and offload it (default on GPU)")
    sweep.add_argument("--beyond-max-positions", action="store_true",
                       help="measure sequences past a model's max_position_embeddings (else refused; the cells "
                            "record it)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=non_negative_int, help="untimed steps per cell")
    timing.add_argument("--min-samples", type=positive_int)
    timing.add_argument("--max-samples", type=positive_int)
    timing.add_argument("--target-ci", type=positive_float,
                        help="stop when the median's 95%% CI half-width is within this fraction of the median")
    timing.add_argument("--budget-s", type=positive_float, help="sampling time per cell before giving up on the CI")
    pairing = parser.add_argument_group("pairing (each swapped cell timed in rounds with its stock baseline)")
    pairing.add_argument("--block-steps", type=positive_int, help="timed steps per block (one model at a time)")
    pairing.add_argument("--min-rounds", type=positive_int, help="paired rounds before the speedup's CI may stop")
    pairing.add_argument("--order", choices=("abba", "random"),
                         help="blocks of a round: ABBA then BAAB (default), or a seeded shuffle")
    pairing.add_argument("--sequential", action="store_true",
                         help="no pairing: time every cell on its own, one after another (for comparison only)")
    noise = parser.add_argument_group("noise guard (a cell failing a check is measured again, then marked noisy)")
    noise.add_argument("--max-cv", type=positive_float, help="step-time spread, robust CV (default 0.15)")
    noise.add_argument("--max-drift", type=positive_float,
                       help="median change from the first to the last third of the samples (default 0.10)")
    noise.add_argument("--remeasure", type=non_negative_int, help="tries after a noisy one (default 1)")
    energy = parser.add_argument_group("energy (NVML; ignored without a GPU)")
    energy.add_argument("--min-energy-window-s", type=non_negative_float,
                        help="run the step until the energy window lasts this long")
    energy.add_argument("--sample-interval-s", type=positive_float, default=0.05, help="power sampler period")
    energy.add_argument("--idle-s", type=non_negative_float, help="idle power baseline before the sweep")
    energy.add_argument("--cooldown-s", type=non_negative_float, default=0.0, help="pause between cells")
    store = parser.add_argument_group("results")
    store.add_argument("--results", default="results", metavar="DIR",
                       help="the results store, as in every teswap command (default: results/)")
    store.add_argument("--no-resume", action="store_true", help="measure every cell, even ones finished earlier")
    store.add_argument("--from-pytest-json", metavar="FILE",
                       help="store the cells of a `pytest bench/ --benchmark-json FILE` run as records, then exit")
    add_parallel_arguments(parser)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="benchmark stock vs swapped: tokens/s, TTFT/TPOT, memory, energy, MFU")
    add_arguments(parser)


def build_spec(args: argparse.Namespace, on: str | None = None) -> tuple[Any, str, bool]:
    """This hardware's default SweepSpec with every flag given replacing its field; why those defaults;
    and whether the flags left the defaults as they were."""
    from teswap.benchmark.plan import default_spec, resolve_device
    from teswap.hardware.probe import default_device, probe_te

    device = resolve_device(on or args.device or default_device())
    default, why = default_spec(device, te_available=bool(probe_te()))
    policy = replace(default.policy, **{name: getattr(args, flag) for name, flag in _TIMING_FLAGS.items()
                                        if getattr(args, flag) is not None})
    noise = replace(default.noise, **{name: getattr(args, name) for name in ("max_cv", "max_drift", "remeasure")
                                      if getattr(args, name) is not None})
    spec = default.overriding(
        models=args.models, workloads=args.workloads, backends=args.backends, precisions=args.precisions,
        seq_lens=args.seq_lens, batches=args.batches, new_tokens=args.new_tokens, options=args.options,
        seed=args.seed, policy=policy, noise=noise,
        paired=False if args.sequential else None,
        min_energy_window_s=args.min_energy_window_s, sample_interval_s=args.sample_interval_s,
        idle_s=args.idle_s, cooldown_s=args.cooldown_s, threads=args.threads, build_on=args.build_on,
        beyond_max_positions=args.beyond_max_positions or None,
    )
    return spec, why, spec == default


# TimingPolicy field -> the `teswap bench` flag that sets it.
_TIMING_FLAGS = {"warmup": "warmup", "min_samples": "min_samples", "max_samples": "max_samples",
                 "target_rel_ci": "target_ci", "budget_s": "budget_s", "block_steps": "block_steps",
                 "min_rounds": "min_rounds", "order": "order"}


def _import_pytest_json(args: argparse.Namespace) -> int:
    from teswap.benchmark.pytest_bench import load_benchmark_json, records_from_benchmark_json
    from teswap.store.runs import open_run

    provenance, records = records_from_benchmark_json(load_benchmark_json(args.from_pytest_json))
    if not records:
        raise TeswapError(f"{args.from_pytest_json} holds no teswap benchmark cells (run with benchmarks enabled)")
    writer = open_run(args.results, provenance)
    for record in records:
        writer.write(record)
    print(f"teswap bench: stored {len(records)} cells from {args.from_pytest_json} in {writer.path}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the sweep (or import a pytest-benchmark JSON); 0 done, 1 a cell errored, 130 interrupted."""
    if args.from_pytest_json:
        return _import_pytest_json(args)
    from teswap.distributed.faults import launch_faults, rank_zero_output
    from teswap.distributed.launch import launch

    with launch(args.parallel, device=args.device, tp_size=args.tp_size) as parallel, launch_faults(parallel), \
            rank_zero_output(parallel):
        return _bench(args, parallel)


def _bench(args: argparse.Namespace, parallel: Any) -> int:
    from teswap.benchmark.plan import describe, plan_cells
    from teswap.benchmark.progress import NullProgress, TqdmProgress
    from teswap.benchmark.summary import decode_table, summary_legend, summary_table
    from teswap.benchmark.sweep import run_sweep
    from teswap.distributed.faults import stopped_by_peer
    from teswap.store.provenance import capture_provenance
    from teswap.swap.sources import resolve_source

    spec, why, defaults = build_spec(args, str(parallel.device) if parallel.distributed else None)
    for model in spec.models:
        resolve_source(model)  # one clear line for a bad name before anything is built
    cells = len(plan_cells(spec))
    launch = f" on {parallel.world_size} ranks, --parallel {parallel.plan}" if parallel.distributed else ""
    print(f"teswap bench: {cells} cells{launch}: {describe(spec)}; results in {args.results}/"
          + (f"\n  ({why})" if defaults else ""))
    started = time.perf_counter()
    result = run_sweep(spec, results_root=args.results, provenance=capture_provenance(),
                       resume=not args.no_resume, progress=TqdmProgress() if parallel.rank == 0 else NullProgress(),
                       parallel=parallel if parallel.distributed else None)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    records = [result.records[key] for key in result.keys if key in result.records]
    print(summary_table(records))
    decode = decode_table(records)
    if decode:
        print(f"\ndecode (TTFT, TPOT: medians over generations; ITL: all inter-token gaps)\n{decode}")
    print(summary_legend(records))
    for record in records:
        if record["status"] != "ok":
            print(f"  {record['status']}: {_label(record['cell'])}: {record['reason']}")
    noisy = sum(1 for r in records if (r.get("noise") or {}).get("noisy"))
    print(f"{result.written} cells measured, {result.resumed} already in the store, {result.missing} missing"
          + (f", {noisy} noisy" if noisy else "") + f"; {time.perf_counter() - started:.1f} s"
          + (f"; written to {result.run_path}" if result.run_path else ""))
    print(f"sweep: {describe(spec)}")
    if result.interrupted and stopped_by_peer(parallel):
        return 1  # another rank failed and said so; its line is the launch's
    if result.interrupted:
        print(f"teswap bench: interrupted; rerun the same command to measure the {result.missing} missing cells",
              file=sys.stderr)
        return 130
    return 1 if any(r["status"] == "error" for r in records) else 0


def _label(cell: dict[str, Any]) -> str:
    from teswap.speed_options import options_label

    decode = f" n={cell['new_tokens']}" if cell["workload"] == "decode" else ""
    return (f"{cell['model']} {cell['workload']} {cell['backend']}/{cell['precision']}"
            f"{options_label(cell.get('options', ''))} s={cell['seq_len']}{decode} b={cell['batch']}")

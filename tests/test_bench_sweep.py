"""Sweeps: which cells run, the records they leave, resuming, skipped cells, the summary and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from teswap.benchmark.errors import BenchConfigError
from teswap.benchmark.noise import NoisePolicy
from teswap.benchmark.plan import SweepSpec, describe, plan_cells
from teswap.benchmark.records import (
    CELL_FIELDS,
    DECODE_CELL_FIELDS,
    METRIC_FIELDS,
    MODEL_CONFIG_FIELDS,
    STATS_FIELDS,
    bench_record,
)
from teswap.benchmark.summary import COLUMNS, summary_legend, summary_rows, summary_table
from teswap.benchmark.sweep import run_sweep
from teswap.benchmark.timing import TimingPolicy
from teswap.cli import main
from teswap.commands import bench
from teswap.commands.args import Parser
from teswap.store.provenance import GitInfo, capture_provenance
from teswap.store.runs import SCHEMA_VERSION, load_records

FAST = TimingPolicy(warmup=1, min_samples=3, max_samples=4, budget_s=0.02)


def spec(**overrides) -> SweepSpec:
    base = dict(models=("tiny",), workloads=("prefill",), backends=("stock", "torch"), precisions=("fp32",),
                seq_lens=(16,), batches=(1,), device="cpu", policy=FAST, threads=1)
    return SweepSpec(**{**base, **overrides})


@pytest.fixture(scope="module")
def provenance():
    return capture_provenance()


def test_plan_runs_one_stock_baseline_per_dtype_and_prefill_before_train():
    cells = plan_cells(spec(workloads=("train", "prefill"), precisions=("fp8-current", "fp32", "bf16", "fp8-delayed"),
                            seq_lens=(16, 32)))
    stock = [(c.precision, c.workload, c.seq_len) for c in cells if c.backend == "stock"]
    assert sorted(stock) == sorted({(p, w, s) for p in ("fp32", "bf16") for w in ("prefill", "train")
                                    for s in (16, 32)})  # no stock cell per FP8 recipe
    assert len(cells) == len(stock) + 4 * 2 * 2
    for backend in ("stock", "torch"):
        workloads = [c.workload for c in cells if c.backend == backend and c.precision != "fp32"]
        assert workloads == sorted(workloads, key=["prefill", "train"].index)  # training moves weights: last
    assert {c.precision for c in cells[:4]} == {"bf16"}  # the bf16 group first: fp8-current was asked first


@pytest.mark.parametrize("overrides, message", [
    (dict(workloads=("serve",)), "workloads: unknown 'serve'"),
    (dict(backends=("stock", "jax")), "backends: unknown 'jax'"),
    (dict(precisions=("fp4",)), "precisions: unknown 'fp4'"),
    (dict(seq_lens=()), "seq_lens"),
    (dict(device="cuda"), "torch sees no CUDA device"),
    (dict(device="tpu"), "invalid device"),
    (dict(threads=0), "threads"),
])
def test_bad_sweeps_are_refused_with_the_reason(overrides, message):
    with pytest.raises(BenchConfigError, match=message):
        plan_cells(spec(**overrides))


def test_sequences_past_the_models_positions_are_refused_unless_asked_for_then_recorded(provenance):
    with pytest.raises(BenchConfigError, match="prefill seq_len 5000: 5000 positions, beyond tiny's "
                                               "max_position_embeddings of 1024; pass --beyond-max-positions"):
        plan_cells(spec(seq_lens=(512, 5000)))
    with pytest.raises(BenchConfigError, match=r"decode seq_len 1000 \+ new_tokens 32: 1032 positions"):
        plan_cells(spec(workloads=("decode",), seq_lens=(1000,), new_tokens=(32,)))
    within, beyond = plan_cells(spec(seq_lens=(512, 5000), backends=("stock",), beyond_max_positions=True))
    assert "beyond_max_positions" not in within.to_dict() and beyond.to_dict()["beyond_max_positions"] is True
    record = bench_record(cell=beyond, model_config={}, provenance=provenance, status="skipped", reason="", stats=None,
                          metrics={}, gpu={}, settings={})
    assert record.cell["beyond_max_positions"] is True  # the cell says it ran past the limit
    assert record.cell_key != bench_record(cell=dataclasses.replace(beyond, beyond_max_positions=False),
                                           model_config={}, provenance=provenance, status="skipped", reason="",
                                           stats=None, metrics={}, gpu={}, settings={}).cell_key


def test_each_cell_becomes_one_complete_record(tmp_path, provenance):
    result = run_sweep(spec(workloads=("prefill", "train")), results_root=tmp_path, provenance=provenance)
    assert (result.written, result.resumed, result.interrupted, result.missing) == (4, 0, False, 0)
    records = load_records(tmp_path, kind="bench")
    assert len(records) == 4 and {r["run_id"] for r in records} == {result.run_path.stem.split("_")[-1]}
    for record in records:
        assert record["schema_version"] == SCHEMA_VERSION and record["status"] == "ok"
        assert set(record["cell"]) == {*CELL_FIELDS, *DECODE_CELL_FIELDS} and record["decode"] is None
        assert (record["cell"]["new_tokens"], record["cell"]["options"]) == (0, "")  # not a decode cell
        assert set(MODEL_CONFIG_FIELDS) <= set(record["model_config"])
        assert set(STATS_FIELDS) <= set(record["stats"]) and set(METRIC_FIELDS) <= set(record["metrics"])
        assert record["model_config"]["params"] == 500_352
        prov = record["provenance"]
        assert prov["git"]["sha"] == provenance.git.sha and prov["machine"]["cpu_cores"] > 0
        assert prov["libraries"]["torch"] and prov["utc_time"]
        assert record["gpu"]["null_reason"] == "device is cpu: no GPU"
        assert record["settings"]["torch_num_threads"] == 1
    assert {(r["cell"]["backend"], r["cell"]["workload"]) for r in records} == {
        (b, w) for b in ("stock", "torch") for w in ("prefill", "train")}


def test_swapped_cells_are_paired_with_their_stock_cell_and_keep_both_sides_rounds(tmp_path, provenance):
    policy = TimingPolicy(warmup=1, min_samples=4, max_samples=40, budget_s=0.05, block_steps=2, min_rounds=4)
    run_sweep(spec(backends=("stock",), policy=policy), results_root=tmp_path, provenance=provenance)
    result = run_sweep(spec(policy=policy), results_root=tmp_path, provenance=provenance)
    assert (result.resumed, result.written) == (1, 1)  # the stock cell comes from the store, still paired with
    stock, swapped = (result.records[k] for k in result.keys)
    paired = swapped["paired"]
    assert stock["paired"] is None and paired["baseline"] == {**swapped["cell"], "backend": "stock"}
    assert (paired["order"], paired["placement"], paired["block_steps"]) == ("abba", "resident", 2)
    assert paired["rounds"] >= 4 and len(paired["samples_s"]) == len(paired["baseline_samples_s"]) == paired["rounds"]
    assert all(len(r) == 4 for r in paired["samples_s"] + paired["baseline_samples_s"])  # 2 blocks x 2 steps a side
    assert [s for r in paired["samples_s"] for s in r] == swapped["stats"]["samples_s"]
    assert paired["speedup_ci_low"] <= paired["speedup"] <= paired["speedup_ci_high"]
    assert swapped["metrics"]["tokens_per_s"] == pytest.approx(16 / swapped["stats"]["median_s"])
    assert paired["baseline_tokens_per_s"] == pytest.approx(16 / paired["baseline_median_s"])
    assert swapped["noise"]["attempts"] in (1, 2) and isinstance(swapped["noise"]["noisy"], bool)
    assert swapped["clocks"] == {"snapshots": 0, "null_reason": "device is cpu: NVML measures NVIDIA GPUs only"}
    assert swapped["settings"]["paired"] is True and swapped["settings"]["policy"]["order"] == "abba"
    sequential = run_sweep(spec(policy=policy, paired=False), results_root=tmp_path, provenance=provenance,
                           resume=False)
    assert all(r["paired"] is None and r["noise"] for r in sequential.records.values())


def test_rerun_measures_only_the_missing_cells(tmp_path, provenance):
    first = run_sweep(spec(seq_lens=(16,)), results_root=tmp_path, provenance=provenance)
    assert first.written == 2
    again = run_sweep(spec(seq_lens=(16, 32)), results_root=tmp_path, provenance=provenance)
    assert (again.written, again.resumed, again.missing) == (2, 2, 0)
    first_run = first.records[first.keys[0]]["run_id"]
    assert [r["cell"]["seq_len"] for r in load_records(tmp_path) if r["run_id"] != first_run] == [32, 32]
    done = run_sweep(spec(seq_lens=(16, 32)), results_root=tmp_path, provenance=provenance)
    assert (done.written, done.resumed, done.run_path) == (0, 4, None)  # nothing to do, no empty run file


def test_another_commit_or_no_resume_measures_again(tmp_path, provenance):
    run_sweep(spec(), results_root=tmp_path, provenance=provenance)
    other = dataclasses.replace(provenance, git=GitInfo(sha="0" * 40, dirty=False, branch="main"))
    assert run_sweep(spec(), results_root=tmp_path, provenance=other).resumed == 0
    assert run_sweep(spec(), results_root=tmp_path, provenance=provenance, resume=False).written == 2


def test_a_torn_last_line_does_not_stop_a_resume(tmp_path, provenance):
    first = run_sweep(spec(), results_root=tmp_path, provenance=provenance)
    with open(first.run_path, "a") as handle:  # what a writer killed mid-line would leave
        handle.write('{"schema_version": 1, "kind": "bench", "cell": ')
    again = run_sweep(spec(), results_root=tmp_path, provenance=provenance)
    assert again.resumed == 2 and again.written == 0 and "unreadable record" in again.notes[0]


def test_unavailable_backends_and_precisions_are_skipped_with_reasons_and_retried(tmp_path, provenance, monkeypatch):
    from teswap.precision import recipes

    # Every recipe is emulated now; a recipe the torch backend could not run is refused like this:
    monkeypatch.setitem(recipes._NOT_EMULATED, "Float8BlockScaling", "Float8BlockScaling is not emulated here")
    monkeypatch.delitem(recipes.RECIPES, "fp8-block")
    the_spec = spec(backends=("torch", "te"), precisions=("fp8-block",))
    result = run_sweep(the_spec, results_root=tmp_path, provenance=provenance)
    reasons = {r["cell"]["backend"]: (r["status"], r["reason"]) for r in result.records.values()}
    assert reasons["torch"][0] == "skipped" and "Float8BlockScaling" in reasons["torch"][1]
    assert reasons["te"][0] == "skipped" and "backend 'te' is unavailable" in reasons["te"][1]
    assert run_sweep(the_spec, results_root=tmp_path, provenance=provenance).written == 2  # not "finished"


def test_summary_compares_each_backend_with_its_stock_baseline(tmp_path, provenance):
    rounds = TimingPolicy(warmup=1, min_samples=3, max_samples=12, budget_s=0.02, min_rounds=4)  # enough for a CI
    result = run_sweep(spec(policy=rounds), results_root=tmp_path, provenance=provenance)
    records = [result.records[k] for k in result.keys]
    stock, swapped = summary_rows(records)
    columns = dict(zip(COLUMNS, swapped, strict=True))
    stock_record, swapped_record = records
    paired = swapped_record["paired"]
    assert columns["vs stock"] == (f"{paired['speedup']:.3f}x [{paired['speedup_ci_low']:.3f}, "
                                   f"{paired['speedup_ci_high']:.3f}]")
    ratio = swapped_record["metrics"]["peak_allocated_bytes"] / stock_record["metrics"]["peak_allocated_bytes"]
    assert columns["mem vs stock"] == f"{ratio:.3f}x"
    assert dict(zip(COLUMNS, stock, strict=True))["vs stock"] == "" and columns["J/token"] == "-"
    assert columns["noise"] in ("steady", "noisy")
    assert summary_table(records).splitlines()[0].split() == [
        "model", "workload", "seq", "batch", "backend", "precision", "status", "tokens/s", "vs", "stock", "noise",
        "peak", "MiB", "mem", "vs", "stock", "J/token"]
    legend = summary_legend(records)
    assert legend.startswith("vs stock: stock step time / swapped step time with its 95% CI; paired")
    # Unpaired (separate cells): the ratio of the two cells' throughputs, marked u, with the unpaired CI.
    unpaired = {**swapped_record, "paired": None}
    text = dict(zip(COLUMNS, summary_rows([stock_record, unpaired])[1], strict=True))["vs stock"]
    tokens = unpaired["metrics"]["tokens_per_s"] / stock_record["metrics"]["tokens_per_s"]
    assert text.startswith(f"{tokens:.3f}x [") and text.endswith("] u")
    assert "u: separate cells" in summary_legend([stock_record, unpaired])


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["bench", *argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["--seq-lens", "0"], "argument --seq-lens: expected a positive integer, got 0"),
    (["--budget-s", "-1"], "argument --budget-s: expected a number > 0, got -1"),
    (["--warmup", "x"], "argument --warmup: expected an integer >= 0, got 'x'"),
    (["--precisions", "fp9"], "precisions: unknown 'fp9'"),
    (["--models", "llama-42b"], "unknown model source 'llama-42b'"),
    (["--device", "cuda"], "torch sees no CUDA device"),
    (["--from-pytest-json", "/nonexistent.json"], "cannot read benchmark JSON /nonexistent.json"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("teswap: error: ") and message in err and err.count("\n") == 1


def test_register_adds_bench_to_a_teswap_parser():
    parser = Parser(prog="teswap")
    bench.register(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    args = parser.parse_args(["bench", "--seq-lens", "16,32", "--backends", "stock,torch"])
    assert isinstance(args, argparse.Namespace) and args.seq_lens == [16, 32] and args.backends == ["stock", "torch"]


def test_cli_sweep_prints_a_summary_and_stores_records(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--workloads", "prefill", "--seq-lens", "16", "--min-samples", "3",
                           "--budget-s", "0.02", "--results", str(tmp_path))
    assert code == 0
    assert out.startswith("teswap bench: 2 cells: tiny; prefill; stock vs torch; fp32; seq 16 x batch 2; cpu, 1 "
                          "thread; each swapped cell paired with stock") and "vs stock" in out
    assert "2 cells measured, 0 already in the store, 0 missing" in out
    assert [json.loads(line)["kind"] for line in next(tmp_path.glob("*/*.jsonl")).read_text().splitlines()] == [
        "bench", "bench"]


def test_the_header_and_closing_lines_describe_the_sweep_that_ran(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--precisions", "bf16", "--workloads", "prefill", "--seq-lens", "16",
                           "--min-samples", "3", "--budget-s", "0.02", "--results", str(tmp_path))
    header, last = out.splitlines()[0], out.splitlines()[-1]
    swept = "tiny; prefill; stock vs torch; bf16; seq 16 x batch 2; cpu, 1 thread; each swapped cell paired with stock"
    assert code == 0 and header.startswith(f"teswap bench: 2 cells: {swept}") and last.startswith(f"sweep: {swept}")
    assert "fp32" not in out and "CPU defaults" not in out
    # threads as asked (the issue's case: --threads 2 printed the defaults' "1 thread"), or torch's own
    assert "; cpu, 2 threads;" in describe(spec(threads=2))
    assert f"; cpu, {torch.get_num_threads()} thread" in describe(spec(threads=None))
    assert describe(spec(paired=False)).endswith("; each cell timed on its own")


def test_only_an_untouched_sweep_is_called_this_hardwares_default():
    parser = Parser(prog="teswap")
    bench.register(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    spec, why, defaults = bench.build_spec(parser.parse_args(["bench"]))
    assert defaults and why.startswith("CPU defaults") and spec.paired and spec.threads == 1
    for flags in (["--threads", "2"], ["--sequential"], ["--max-drift", "0.2"], ["--order", "random"]):
        assert not bench.build_spec(parser.parse_args(["bench", *flags]))[2], flags
    argv = ["bench", "--sequential", "--block-steps", "3", "--remeasure", "0"]
    spec, _, _ = bench.build_spec(parser.parse_args(argv))
    assert not spec.paired and spec.policy.block_steps == 3 and spec.noise.remeasure == 0


def test_fp8_cells_run_against_a_bf16_stock_baseline_and_record_the_recipe(tmp_path, provenance):
    result = run_sweep(spec(precisions=("fp8-delayed",), workloads=("prefill", "train")), results_root=tmp_path,
                       provenance=provenance)
    records = [result.records[k] for k in result.keys]
    assert [(r["cell"]["backend"], r["cell"]["precision"], r["status"]) for r in records] == [
        ("stock", "bf16", "ok")] * 2 + [("torch", "fp8-delayed", "ok")] * 2
    assert records[0]["recipe"] is None
    assert records[2]["recipe"] == {"name": "fp8-delayed", "type": "DelayedScaling", "margin": 0,
                                    "fp8_format": "HYBRID", "amax_history_len": 1024, "amax_compute_algo": "max"}
    assert all(row[8].endswith("x") for row in summary_rows(records)[2:])  # compared with the bf16 stock cells


def test_an_oom_cell_is_recorded_the_sweep_goes_on_and_a_rerun_keeps_it(tmp_path, provenance, monkeypatch):

    from teswap.benchmark import runner

    real_run_rounds = runner.run_rounds

    def run_rounds(sides, policy, timer, **kwargs):
        if sides[-1].step.input_ids.shape[1] == 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_run_rounds(sides, policy, timer, **kwargs)

    monkeypatch.setattr(runner, "run_rounds", run_rounds)
    the_spec = spec(seq_lens=(16, 32, 48))
    result = run_sweep(the_spec, results_root=tmp_path, provenance=provenance)
    records = [result.records[key] for key in result.keys]
    assert [(r["cell"]["backend"], r["cell"]["seq_len"], r["status"]) for r in records] == [
        ("stock", 16, "ok"), ("stock", 32, "oom"), ("stock", 48, "ok"),
        ("torch", 16, "ok"), ("torch", 32, "oom"), ("torch", 48, "ok")]
    assert run_sweep(the_spec, results_root=tmp_path, provenance=provenance).written == 0  # oom counts as done


def test_the_sweeps_noise_policy_is_the_one_its_cells_are_judged_by(tmp_path, provenance):
    """--max-cv / --remeasure reach the cells: a bound nothing meets marks every cell noisy, after one try."""
    strict = NoisePolicy(max_cv=1e-9, remeasure=0)
    policy = TimingPolicy(warmup=1, min_samples=4, max_samples=4, budget_s=0.02)  # 4: enough for a CV
    result = run_sweep(spec(backends=("stock",), noise=strict, policy=policy), results_root=tmp_path,
                       provenance=provenance)
    (record,) = result.records.values()
    assert record["noise"]["noisy"] and record["noise"]["attempts"] == 1
    assert record["settings"]["noise"]["remeasure"] == 0


def test_an_emulated_block_recipe_is_never_timed_as_that_recipes_speed(tmp_path, provenance):
    """The torch backend runs fp8-block, mxfp8 and nvfp4 emulated: parity yes, a speed of the recipe no."""
    result = run_sweep(spec(backends=("torch",), precisions=("mxfp8",)), results_root=tmp_path, provenance=provenance)
    ((status, reason),) = {(r["status"], r["reason"]) for r in result.records.values()
                           if r["cell"]["backend"] == "torch"}
    assert status == "skipped" and "emulated" in reason and "not a speed of MXFP8BlockScaling" in reason

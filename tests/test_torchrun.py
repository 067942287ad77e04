"""Multi-process launches through the entry point a user types: `torchrun ... -m teswap.cli check|bench`, gloo on CPU.

Few launches, each combining checks (2 cores in CI): replicas benchmarked and merged, fsdp and tp parity with a DCP
round trip, a 2-D fsdp+tp mesh on 4 processes, and a rank that fails mid-cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teswap.store.ranks import aggregate_ranks
from teswap.store.runs import load_records

TESTS = Path(__file__).resolve().parent
TINY_BENCH = ["--models", "tiny", "--workloads", "prefill", "--backends", "stock,torch", "--precisions", "fp32",
              "--seq-lens", "16", "--batches", "1", "--min-samples", "2", "--max-samples", "4", "--min-rounds", "2",
              "--budget-s", "0.1", "--warmup", "1", "--remeasure", "0"]


def torchrun(nproc: int, *argv: str, entry: tuple[str, ...] = ("-m", "teswap.cli"), timeout: float = 150,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node nproc <entry> argv`, as a user would type it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               *entry, *argv]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ, check=False)


def _teswap_lines(text: str) -> list[str]:
    """teswap's error lines (rank 0's progress bar may share a terminal line with another rank's, before it)."""
    return ["teswap: error" + part.split("\n")[0] for part in text.split("teswap: error")[1:]]


def test_replicas_bench_times_ranks_together_and_the_report_merges_them(tmp_path):
    done = torchrun(2, "bench", *TINY_BENCH, "--results", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [r for r in load_records(tmp_path) if r["kind"] == "bench"]
    assert sorted((r["rank"]["rank"], r["cell"]["backend"]) for r in records) == [
        (0, "stock"), (0, "torch"), (1, "stock"), (1, "torch")]
    assert len({r["run_id"] for r in records}) == 1  # rank 0's run id, shared
    swapped = [r for r in records if r["cell"]["backend"] == "torch"]
    for record in swapped:
        launch = record["distributed"]
        assert launch["plan"] == "replicas" and launch["world_size"] == 2 and launch["amax_group_size"]["torch"] == 1
        assert [i["rank"] for i in launch["ranks"]] == [0, 1] and launch["ranks"][0]["torch"]
        assert len(launch["rank_median_s"]) == 2 and len(launch["rank_baseline_median_s"]) == 2  # both ranks
        assert record["paired"]["speedup"] > 0
        # every step counts at its slowest rank: no recorded sample is below either rank's own time for it
        own = launch["rank_samples_s"]
        assert record["stats"]["samples_s"] == [max(a, b) for a, b in zip(*own, strict=True)]
    assert swapped[0]["stats"] == swapped[1]["stats"] and swapped[0]["paired"] == swapped[1]["paired"]
    merged = {m["cell"]["backend"]: m for m in aggregate_ranks(records)}
    record = swapped[0]
    tokens = record["distributed"]["tokens_per_step"] * 2 / record["stats"]["median_s"]
    assert merged["torch"]["metrics"]["tokens_per_s"] == pytest.approx(tokens)  # all tokens / slowest time
    assert merged["torch"]["paired"]["speedup"] == record["paired"]["speedup"]
    from teswap.cli import main

    assert main(["report", "--results", str(tmp_path), "--format", "csv"]) == 0


def test_run_under_tp_publishes_its_sharded_verdict_beside_the_merged_speed(tmp_path):
    """`teswap run --parallel tp`: the sharded check stored once (rank 0, worst over the ranks, both ranks' identity),
    both ranks' paired cells, and the published row: tokens of the tensor-parallel ranks not summed, the tp
    verdict beside the speed."""
    from teswap.reporting.frame import bench_frame, load_frame, parity_frame
    from teswap.reporting.tables import comparison_table

    done = torchrun(2, "run", "--parallel", "tp", "--model", "tiny", "--backend", "torch", "--precision", "fp32",
                    "--seq-lens", "16", "--batch", "1", "--results", str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (parity,) = load_records(tmp_path, kind="parity")
    assert parity["status"] == "passed" and parity["case"]["parallel"] == "tp" and parity["case"]["world_size"] == 2
    assert parity["rank"]["rank"] == 0 and [r["rank"] for r in parity["distributed"]["ranks"]] == [0, 1]
    assert parity["verdict_rows"] and all(row["error"] <= row["bound"] for row in parity["verdict_rows"])
    bench = [r for r in load_records(tmp_path, kind="bench") if r["cell"]["workload"] == "prefill"]
    assert sorted((r["rank"]["rank"], r["cell"]["backend"]) for r in bench) == [
        (0, "stock"), (0, "torch"), (1, "stock"), (1, "torch")]
    assert all(r["distributed"]["plan"] == "tp" and r["distributed"]["tp_size"] == 2 for r in bench)
    frame = load_frame(tmp_path)
    table = comparison_table(bench_frame(frame), parity_frame(frame))
    row = table[table["workload"] == "prefill"].iloc[0]
    swapped = next(r for r in bench if r["cell"]["backend"] == "torch")
    slowest = swapped["stats"]["median_s"]
    assert row["tokens_per_s"] == pytest.approx(swapped["distributed"]["tokens_per_step"] / slowest)  # not x2
    assert (row["plan"], row["world_size"], row["parity"], row["parity_cases"]) == ("tp", 2, "passed", "1/1")
    published = (tmp_path / "report" / "results.md").read_text()
    assert "torch (tp ×2)" in published and "passed 1/1" in published and "untested" not in published


def _check(nproc: int, plan: str, tmp_path: Path, *extra: str) -> dict:
    out, store = tmp_path / "check.json", tmp_path / "results"
    done = torchrun(nproc, "check", "--parallel", plan, "--seq-len", "16", "--json", str(out),
                    "--results", str(store), *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "verdict: PASS" in done.stdout
    (record,) = load_records(store, kind="parity")  # rank 0 alone stores the worst over the ranks
    assert record["distributed"]["plan"] == plan and record["distributed"]["world_size"] == nproc
    return json.loads(out.read_text())


@pytest.mark.parametrize("plan", ["fsdp", "tp"])
def test_sharded_parity_and_checkpoint_round_trip(plan, tmp_path):
    report = _check(2, plan, tmp_path, "--checkpoint", str(tmp_path / "dcp"))
    rows = {row["what"].split(":")[0] + ": " + row["what"].split(", ")[-1]: row for row in report["rows"]}
    assert report["passed"] and report["distributed"]["plan"] == plan and report["distributed"]["world_size"] == 2
    assert all(row["passed"] for row in report["rows"]) and len(report["rows"]) == 6
    assert rows["plan: logits"]["error"] <= 1e-5  # sharded stock == unsharded stock at fp32
    assert rows["swap: logits"]["error"] <= 1e-5  # stock == swapped, sharded, at fp32
    assert any(r["what"].startswith("DCP round trip") and r["error"] == 0 for r in report["rows"])
    assert report["audit"]["stock"]["layers"] == report["audit"]["swapped"]["layers"] > 0


def test_fsdp_and_tp_on_a_two_dimensional_mesh_of_four(tmp_path):
    report = _check(4, "fsdp+tp", tmp_path)
    assert report["distributed"]["mesh"] == {"dp": 2, "tp": 2} and report["passed"]


def test_a_rank_failing_mid_cell_ends_the_launch_with_one_line(tmp_path):
    started = time.monotonic()
    done = torchrun(2, *TINY_BENCH, "--results", str(tmp_path), entry=(str(TESTS / "rank_fault.py"), "bench"),
                    env={"TESWAP_TEST_FAILING_RANK": "1"})
    assert time.monotonic() - started < 60 + 20  # torchrun's own start included
    assert done.returncode != 0
    lines = _teswap_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]
    assert "rank 1 of 2" in lines[0] and "injected failure" in lines[0] and "rerun the same command" in lines[0]
    records = [r for r in load_records(tmp_path) if r["kind"] == "bench"]
    finished = {(r["rank"]["rank"], r["cell"]["backend"], r["status"]) for r in records}
    assert {(0, "stock", "ok"), (1, "stock", "ok"), (1, "torch", "error")} <= finished  # finished cells kept

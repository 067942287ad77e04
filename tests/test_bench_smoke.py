"""The bench suite's CPU smoke subset in the default test run: pytest-benchmark cells and JSON -> records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from teswap import build_pair
from teswap.benchmark.plan import Cell
from teswap.benchmark.pytest_bench import records_from_benchmark_json, run_benchmark_cell, update_machine_info
from teswap.benchmark.records import METRIC_FIELDS, STATS_FIELDS
from teswap.cli import main
from teswap.store.runs import load_records

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair():
    return build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("workload, backend", [("prefill", "stock"), ("train", "torch")])
def test_bench_cell_runs_under_pytest_benchmark(benchmark, pair, workload, backend):
    cell = Cell(model="tiny", workload=workload, backend=backend, precision="fp32", seq_len=32, batch=2, device="cpu")
    model = pair.stock if backend == "stock" else pair.swapped
    info = run_benchmark_cell(benchmark, cell, model, rounds=3, warmup=1)
    assert benchmark.extra_info["teswap"]["cell"] == cell.to_dict()
    if not benchmark.enabled:  # --benchmark-disable: the step ran once, untimed
        assert info["tokens_per_s"] is None
        return
    assert info["tokens_per_s"] == pytest.approx(cell.tokens_per_step / benchmark.stats.stats.median)
    assert info["peak_allocated_bytes"] > 0 and info["energy_null_reason"]
    assert benchmark.stats.stats.rounds == 3


def test_machine_info_hook_adds_gpu_driver_cuda_te_and_provenance():
    machine_info: dict = {"node": "kept"}
    update_machine_info(machine_info)
    assert machine_info["node"] == "kept"
    for key in ("gpu", "gpu_name", "gpu_uuid", "driver_version", "cuda_runtime", "cuda_driver_version",
                "compute_capability", "transformer_engine", "teswap_provenance"):
        assert key in machine_info
    assert machine_info["teswap_provenance"]["git"].keys() == {"sha", "dirty", "branch"}


def test_benchmark_json_from_the_bench_suite_becomes_records(tmp_path, capsys):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_cells.py", "-m", "smoke", "-k", "prefill and s32",
         "-q", "-p", "no:cacheprovider", "--teswap-rounds", "3", "--teswap-warmup", "1",
         f"--benchmark-json={out}"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    data = json.loads(out.read_text())
    assert "teswap_provenance" in data["machine_info"] and "gpu" in data["machine_info"]
    provenance, records = records_from_benchmark_json(data)
    assert {r.cell["backend"] for r in records} == {"stock", "torch"}
    (swapped,) = [r for r in records if r.cell["backend"] == "torch"]  # timed in AB rounds with stock
    assert swapped.paired["rounds"] == 3 and swapped.paired["baseline"]["backend"] == "stock"
    assert [len(r) for r in swapped.paired["samples_s"]] == [1, 1, 1] == [len(r) for r in
                                                                         swapped.paired["baseline_samples_s"]]
    assert swapped.paired["samples_s"] == [[s] for s in swapped.stats["samples_s"]]
    assert swapped.paired["speedup_ci_low"] <= swapped.paired["speedup"] <= swapped.paired["speedup_ci_high"]
    for record in records:
        assert record.status == "ok" and set(METRIC_FIELDS) <= set(record.metrics)
        assert set(STATS_FIELDS) <= set(record.stats) and record.stats["count"] == 3
        assert len(record.stats["samples_s"]) == 3
        assert record.stats["median_s"] == pytest.approx(record.cell["batch"] * record.cell["seq_len"]
                                                         / record.metrics["tokens_per_s"])
    assert main(["bench", "--from-pytest-json", str(out), "--results", str(tmp_path / "store")]) == 0
    stored = load_records(tmp_path / "store", kind="bench")
    assert len(stored) == 2 and stored[0]["provenance"] == provenance.to_dict()
    assert "stored 2 cells" in capsys.readouterr().out


def test_json_without_teswap_provenance_is_refused():
    from teswap.benchmark.errors import BenchConfigError

    with pytest.raises(BenchConfigError, match="not written by teswap's bench suite"):
        records_from_benchmark_json({"machine_info": {}, "benchmarks": []})

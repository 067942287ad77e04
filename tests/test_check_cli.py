"""`teswap check`: readable report, JSON fields, exit 0/1/2; deliberate faults (--mutate) caught, named by layer."""

from __future__ import annotations

import json

import pytest
import torch

from teswap.cli import main
from teswap.store.runs import load_records

FAST = ["--seq-len", "64", "--batch", "2", "--batches", "1", "--gen-prompts", "16", "--gen-tokens", "4"]


def test_clean_swap_passes_and_writes_json_and_a_record(tmp_path, capsys):
    out_json = tmp_path / "check.json"
    code = main(["check", "--model", "tiny-llama3", "--precision", "bf16", *FAST, "--json", str(out_json),
                 "--results", str(tmp_path / "store")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "swap verdict: PASS" in printed and "first diverging layer: none" in printed
    assert "precision verdict: FIT" in printed and "random token ids" in printed
    report = json.loads(out_json.read_text())
    assert report["passed"] is True and report["precision"] == "bf16" and report["backend"] == "torch"
    assert report["policy"] == "bf16 v2" and report["precision_verdict"] == "fit"
    for key in ("rel_rms", "logits_sqnr_db", "kl_div", "top1_agreement", "prefix_match_rate"):
        assert key in report["metrics"] and key in report["stock_metrics"]
    assert {"reference", "stock", "swapped"} == report["perplexity"].keys()
    (record,) = load_records(tmp_path / "store", kind="parity")
    assert record["passed"] is True and record["case"]["precision"] == "bf16"
    assert record["policy"] == {"name": "bf16", "version": 2} and record["precision_verdict"] == "fit"
    assert record["provenance"]["libraries"]["torch"] == torch.__version__


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8-delayed"])
@pytest.mark.parametrize("mutation, layer", [("gate-up-swapped", 0), ("layer-at-init", 1), ("rope-base-10000", 0)])
def test_a_broken_swap_fails_with_exit_1_and_names_the_layer(capsys, mutation, layer, precision):
    """tiny-llama3 has theta 500000 and llama3 scaling, so TE's default base 10000 is a real fault there."""
    code = main(["check", "--model", "tiny-llama3", "--precision", precision, "--seq-len", "128", "--batch", "2",
                 "--batches", "1", "--gen-tokens", "0", "--mutate", mutation])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "swap verdict: FAIL" in printed and f"first diverging layer: {layer}" in printed


@pytest.mark.parametrize("precision", ["fp8-current", "fp8-block", "mxfp8", "nvfp4"])
def test_fp8_skipped_in_the_swapped_model_is_caught_as_better_than_stock(capsys, precision):
    code = main(["check", "--model", "tiny-llama3", "--precision", precision, *FAST, "--mutate", "fp8-skipped"])
    printed = capsys.readouterr().out
    assert code == 1 and "better than stock" in printed


@pytest.mark.parametrize("argv, message", [
    (["check", "--backend", "te", "--precision", "mxfp8"], "unavailable"),
    (["check", "--precision", "fp9"], "argument --precision: invalid choice"),
    (["check", "--tol", "nonsense=1"], "unknown bound 'nonsense'"),
    (["check", "--policy", "/no/such/policy.json"], "policy"),
    (["check", "--model", "gpt-17"], "unknown model source 'gpt-17'"),
    (["check", "--mutate", "everything"], "unknown mutation 'everything'"),
])
def test_bad_input_or_unavailable_precision_is_exit_2(capsys, argv, message):
    try:
        code = main([*argv, "--no-record"])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("teswap: error: ") and err.count("\n") == 1 and message in err


def test_a_lossy_precision_is_reported_but_is_not_a_swap_failure(capsys):
    code = main(["check", *FAST, "--no-record", "--tol", "sqnr_db=500"])
    printed = capsys.readouterr().out
    assert code == 0 and "precision verdict: LOSSY (stock fails sqnr_db too" in printed


def test_a_tighter_swap_bound_can_fail_a_clean_swap(capsys):
    code = main(["check", "--precision", "bf16", *FAST, "--no-record", "--tol", "rel_rms_vs_stock=0.5",
                 "--tol", "rel_rms_vs_stock.slack=0"])
    assert code == 1 and "rel_rms_vs_stock" in capsys.readouterr().out

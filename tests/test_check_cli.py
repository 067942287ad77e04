"""`teswap check`: readable table, JSON fields, exit 0/1/2, corrupted swaps named by layer."""

from __future__ import annotations

import json

import pytest
import torch

import teswap.layers.rope
import teswap.swap.mapping
import teswap.swap.pair
from teswap.cli import main
from teswap.store.runs import load_records

FAST = ["--seq-len", "64", "--batch", "1", "--gen-tokens", "4"]


def test_clean_swap_passes_and_writes_json_and_a_record(tmp_path, capsys):
    out_json = tmp_path / "check.json"
    code = main(["check", "--model", "tiny-llama3", "--precision", "bf16", *FAST, "--json", str(out_json),
                 "--results", str(tmp_path / "store")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "verdict: PASS" in printed and "first diverging layer: none" in printed
    report = json.loads(out_json.read_text())
    assert report["passed"] is True and report["precision"] == "bf16" and report["backend"] == "torch"
    assert report["policy"] == "bf16 v1"
    for key in ("logits_max_abs", "logits_cosine", "logits_sqnr_db", "kl_div", "top1_agreement"):
        assert key in report["metrics"] and key in report["stock_metrics"]
    (record,) = load_records(tmp_path / "store", kind="parity")
    assert record["passed"] is True and record["case"]["precision"] == "bf16"
    assert record["policy"] == {"name": "bf16", "version": 1}
    assert record["provenance"]["libraries"]["torch"] == torch.__version__


def _swap_gate_up(monkeypatch):
    monkeypatch.setattr(teswap.swap.mapping, "_GATE_UP", ("mlp.up_proj.weight", "mlp.gate_proj.weight"))


def _randomize_layer_1(monkeypatch):
    original = teswap.swap.pair._copy_weights

    def copy_then_randomize(stock, swapped, **kwargs):
        original(stock, swapped, **kwargs)
        with torch.no_grad():
            for param in swapped.model.layers[1].parameters():
                if param.dim() == 2:
                    torch.nn.init.normal_(param, std=0.023)

    monkeypatch.setattr(teswap.swap.pair, "_copy_weights", copy_then_randomize)


def _ignore_rope_theta(monkeypatch):
    def base_10000(self, position_ids, seq_len, device):
        dim = self.rotary_emb.inv_freq.numel() * 2
        inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv).to(device)
        return torch.cat((angles, angles), dim=-1).reshape(seq_len, 1, 1, -1)

    monkeypatch.setattr(teswap.layers.rope.RopeTable, "freqs", base_10000)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8-delayed"])
@pytest.mark.parametrize("corrupt, layer", [(_swap_gate_up, 0), (_randomize_layer_1, 1), (_ignore_rope_theta, 0)],
                         ids=["gate-up-swapped", "layer-1-random", "rope-base-ignored"])
def test_corrupted_swap_fails_with_exit_1_and_names_the_layer(monkeypatch, capsys, tmp_path, corrupt, layer,
                                                              precision):
    corrupt(monkeypatch)
    code = main(["check", "--model", "tiny-llama3", "--precision", precision, "--seq-len", "128", "--batch", "2",
                 "--gen-tokens", "0", "--no-record"])
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert "verdict: FAIL" in printed
    assert f"first diverging layer: {layer}" in printed


@pytest.mark.parametrize("argv, message", [
    (["check", "--precision", "mxfp8"], "precision 'mxfp8' on backend 'torch' is unavailable"),
    (["check", "--precision", "fp9"], "argument --precision: invalid choice"),
    (["check", "--tol", "nonsense=1"], "unknown bound 'nonsense'"),
    (["check", "--policy", "/no/such/policy.json"], "policy"),
    (["check", "--model", "gpt-17"], "unknown model source 'gpt-17'"),
])
def test_bad_input_or_unavailable_precision_is_exit_2(capsys, argv, message):
    try:
        code = main([*argv, "--no-record"])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("teswap: error: ") and err.count("\n") == 1 and message in err


def test_tolerance_override_can_fail_a_clean_swap(capsys):
    code = main(["check", *FAST, "--no-record", "--tol", "sqnr_db=500"])
    assert code == 1
    assert "sqnr_db" in capsys.readouterr().out

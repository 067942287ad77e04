"""Parity of stock vs swapped: presets x precision (incl. FP8 recipes) x sequence length x batch.

Each case runs `teswap.parity.case.run_parity_case` (logits, per-layer hidden states, loss and gradients,
greedy decoding, all against an fp64/fp32 reference) and appends its parity record to the results
store. A precision the backend or hardware cannot run is recorded as skipped with the reason and
skipped here with the same reason; it is never run at another precision.
"""

from __future__ import annotations

import pytest
import torch

from teswap.parity.case import ParityCase, run_parity_case
from teswap.precision.runtime import precision_availability
from teswap.precision.table import PRECISIONS
from teswap.store.records import ParityRecord

CPU_PRESETS = ("tiny", "tiny-llama3")
CPU_SHAPES = ((1, 64), (2, 128))  # (batch, seq_len)
GPU_PRESETS = ("llama3.2-1b",)
GPU_SHAPES = ((1, 512), (2, 2048))


def _run(results_writer, case: ParityCase) -> None:
    availability = precision_availability(case.precision, case.backend, case.device)
    if not availability:
        results_writer.write(ParityRecord.skipped(case.as_dict(), availability.reason))
        pytest.skip(availability.reason)
    report = run_parity_case(case)
    results_writer.write(report.record())
    assert report.passed, report.failure_summary()


@pytest.mark.parametrize("batch, seq_len", CPU_SHAPES, ids=[f"b{b}s{s}" for b, s in CPU_SHAPES])
@pytest.mark.parametrize("precision", tuple(PRECISIONS))
@pytest.mark.parametrize("preset", CPU_PRESETS)
def test_torch_backend_on_cpu(results_writer, preset, precision, batch, seq_len):
    _run(results_writer, ParityCase(source=preset, backend="torch", precision=precision, batch=batch,
                                    seq_len=seq_len, device="cpu"))


@pytest.mark.parametrize("precision", ("fp32", "fp8-delayed"))
def test_fused_qkv_layout_on_cpu(results_writer, precision):
    _run(results_writer, ParityCase(source="tiny-llama3", backend="torch", precision=precision, fuse_qkv=True,
                                    device="cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("batch, seq_len", GPU_SHAPES, ids=[f"b{b}s{s}" for b, s in GPU_SHAPES])
@pytest.mark.parametrize("precision", ("bf16", "fp8-delayed", "fp8-current"))
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_torch_backend_on_gpu(results_writer, preset, precision, batch, seq_len):
    _run(results_writer, ParityCase(source=preset, backend="torch", precision=precision, batch=batch,
                                    seq_len=seq_len, device="cuda"))


@pytest.mark.te
@pytest.mark.parametrize("batch, seq_len", GPU_SHAPES, ids=[f"b{b}s{s}" for b, s in GPU_SHAPES])
@pytest.mark.parametrize("precision", tuple(p for p in PRECISIONS if p != "fp32"))
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_te_backend_on_gpu(results_writer, preset, precision, batch, seq_len):
    _run(results_writer, ParityCase(source=preset, backend="te", precision=precision, batch=batch,
                                    seq_len=seq_len, device="cuda"))


def test_fp8_error_exceeds_bf16_error(results_writer):
    """FP8 really quantizes: its logits error vs the reference is well above bf16's, on the same weights."""
    errors = {}
    for precision in ("bf16", "fp8-current", "fp8-delayed"):
        report = run_parity_case(ParityCase(source="tiny", precision=precision, gen_tokens=0, grads=False))
        errors[precision] = report.swapped["robust_rel"]
        assert report.passed, report.failure_summary()
    assert errors["fp8-current"] > 3 * errors["bf16"] and errors["fp8-delayed"] > 3 * errors["bf16"]
    assert torch.isfinite(torch.tensor(list(errors.values()))).all()

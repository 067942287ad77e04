"""teswap run's parity plan: a case per timed (model, backend, precision), sized to the free memory, a stand-in
model where the timed one cannot fit (marked), skipped with the estimate where nothing does."""

from __future__ import annotations

import pytest

from teswap.hardware.free_memory import FreeMemory
from teswap.hardware.probe import Availability
from teswap.job import parity_plan
from teswap.parity.case import ParityCase

GIB = 1024**3


def plan_with_free(monkeypatch, free_bytes: int, model: str = "llama3-8b"):
    monkeypatch.setattr(parity_plan, "free_memory", lambda device: FreeMemory(free_bytes, "test allowance"))
    reasons: list[str] = []
    cases = parity_plan.parity_cases((model,), ("torch",), ("bf16",), lambda source: ParityCase(
        source=source, seq_len=2048, batch=1), reasons)
    return cases, reasons


def test_each_timed_model_backend_and_precision_gets_its_own_case(monkeypatch):
    monkeypatch.setattr(parity_plan, "free_memory", lambda device: FreeMemory(None, "unknown"))
    refused = Availability(False, "MXFP8BlockScaling needs SM 10.x")  # as a backend that cannot run it answers
    real = parity_plan.precision_availability
    monkeypatch.setattr(parity_plan, "precision_availability",
                        lambda name, backend, device: refused if name == "mxfp8" else real(name, backend, device))
    cases = parity_plan.parity_cases(("tiny", "tiny-llama3"), ("torch",), ("fp32", "fp8-current", "mxfp8"),
                                     lambda source: ParityCase(source=source), [])
    assert [(p.case.source_name, p.case.precision, p.skip is None) for p in cases] == [
        ("tiny", "fp32", True), ("tiny", "fp8-current", True), ("tiny", "mxfp8", False),
        ("tiny-llama3", "fp32", True), ("tiny-llama3", "fp8-current", True), ("tiny-llama3", "mxfp8", False)]
    assert "MXFP8BlockScaling" in cases[2].skip  # the backend cannot run it: recorded as skipped, with why


def test_a_case_that_fits_runs_whole(monkeypatch):
    ((planned,), reasons) = plan_with_free(monkeypatch, 1000 * GIB)
    assert planned.skip is None and planned.case.grads and planned.case.stands_for is None and reasons == []


def test_a_case_too_big_with_gradients_runs_without_them_on_the_timed_model(monkeypatch):
    full = parity_plan.case_estimate(ParityCase(source="llama3-8b", precision="bf16", seq_len=2048, batch=1))
    ((planned,), reasons) = plan_with_free(monkeypatch, int(full.total_bytes * 0.9))  # 8B: ~60 GiB without
    assert planned.skip is None and not planned.case.grads and planned.case.source_name == "llama3-8b"
    assert "parity on llama3-8b at 2048 tokens needs ~" in reasons[0] and "without the gradient" in reasons[0]


def test_where_the_timed_model_cannot_fit_its_proxy_stands_in_and_says_so(monkeypatch):
    ((planned,), reasons) = plan_with_free(monkeypatch, 40 * GIB)
    assert planned.skip is None and planned.case.source_name == "llama3.2-1b"
    assert planned.case.stands_for == "llama3-8b" and planned.case.as_dict()["stands_for"] == "llama3-8b"
    assert any("llama3.2-1b is checked in its place" in reason for reason in reasons)


@pytest.mark.parametrize("model", ["llama3-8b", "llama2-7b"])
def test_where_nothing_fits_the_case_is_skipped_with_the_estimate(monkeypatch, model):
    ((planned,), _) = plan_with_free(monkeypatch, 2 * GIB, model)
    assert planned.skip.startswith("parity on ") and "estimated peak" in planned.skip
    assert "free memory, 2.00 GiB (test allowance)" in planned.skip


def test_parity_on_a_cpu_uses_the_cores_other_processes_leave_free(monkeypatch):
    import torch

    from teswap.job import run

    monkeypatch.setattr(run.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for load, threads in ((0.2, 2), (1.1, 1), (5.0, 1)):  # one busy neighbour on 2 cores: 1 thread, not 2
        monkeypatch.setattr(run.os, "getloadavg", lambda load=load: (load, load, load))
        assert run.parity_threads("cpu") == threads
    assert run.parity_threads("cuda:0") is None

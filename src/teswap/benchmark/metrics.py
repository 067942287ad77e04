"""A finished cell's "metrics" field: throughput, memory, energy, MFU and, for decode, its inference metrics."""

from __future__ import annotations

from typing import Any

import torch

from teswap.benchmark.energy import EnergyMetrics
from teswap.benchmark.memory import MemoryResult
from teswap.benchmark.mfu import ModelShape, model_flops_utilization
from teswap.benchmark.plan import Cell
from teswap.benchmark.workloads import WorkloadStep
from teswap.store.records import DECODE_METRICS


def _device_name(device: torch.device) -> str | None:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def decode_fields(step: WorkloadStep, timings: dict[str, list]) -> tuple[dict[str, float], dict[str, Any] | None]:
    """A decode step's metrics and "decode" record field from its timed generations ({}, None otherwise,
    and where only whole steps were timed, as pytest-benchmark does)."""
    summarize = getattr(step, "summarize", None)
    if summarize is None or "ttft_s" not in timings:
        return {}, None
    return summarize(timings)


def cell_metrics(cell: Cell, shape: ModelShape, device: torch.device, *, tokens_per_s: float | None,
                 memory: MemoryResult, energy: EnergyMetrics, idle: dict[str, Any],
                 decode: dict[str, float] | None = None) -> dict[str, Any]:
    """A finished cell's "metrics": throughput, memory, energy and MFU, each with its method or null reason.

    Decode: tokens/s counts output tokens end to end, energy per token is per output token, and MFU is
    taken at the decode tokens/s (mfu.py)."""
    inference: dict[str, float | None] = {**dict.fromkeys(DECODE_METRICS), **(decode or {})}  # null outside decode
    rate = inference.get("decode_tokens_per_s") if cell.workload == "decode" else tokens_per_s
    mfu = model_flops_utilization(shape=shape, seq_len=cell.seq_len, workload=cell.workload, precision=cell.precision,
                                  tokens_per_s=rate, device_type=device.type, device_name=_device_name(device),
                                  new_tokens=cell.new_tokens)
    if cell.workload == "decode":
        inference["energy_per_output_token_j"] = energy.energy_per_token_j
    return {"tokens_per_s": tokens_per_s, **memory.to_dict(), **energy.to_dict(),
            "flops_per_token": mfu.flops_per_token, "mfu_vs_bf16_peak": mfu.mfu_vs_bf16_peak,
            "mfu_vs_precision_peak": mfu.mfu_vs_precision_peak, "mfu_null_reason": mfu.mfu_null_reason,
            "mfu_peak_gpu": mfu.peak_gpu, **idle, **inference}

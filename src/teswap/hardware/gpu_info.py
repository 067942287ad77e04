"""The GPU a benchmark ran on, beyond `teswap.store.provenance.MachineInfo`: UUID, power limits, clocks.

Each figure is read on its own, so one unsupported NVML query nulls that field (its reason kept in
`null_reasons`) instead of losing the rest. On a CPU device the whole block is null with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from teswap.hardware.nvml import NvmlError, nvml_call, nvml_handle, nvml_session, probe_nvml, torch_device_uuid
from teswap.hardware.probe import te_version

GPU_FIELDS = (
    "name", "count", "uuid", "compute_capability", "total_memory_bytes", "cuda_runtime", "driver_version",
    "cuda_driver_version", "power_limit_w", "default_power_limit_w", "max_sm_clock_mhz", "max_memory_clock_mhz",
    "applications_sm_clock_mhz", "transformer_engine",
)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_driver_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"  # NVML encodes 12.4 as 12040


def _nvml_fields(device: torch.device) -> tuple[dict[str, Any], dict[str, str]]:
    """NVML's figures for `device` and, per field it could not read, why."""
    import pynvml

    handle = nvml_handle(device)
    queries: dict[str, Callable[[], Any]] = {
        "driver_version": lambda: _decode(nvml_call(pynvml.nvmlSystemGetDriverVersion)),
        "cuda_driver_version": lambda: _cuda_driver_text(nvml_call(pynvml.nvmlSystemGetCudaDriverVersion)),
        "power_limit_w": lambda: nvml_call(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle) / 1e3,
        "default_power_limit_w": lambda: nvml_call(pynvml.nvmlDeviceGetPowerManagementDefaultLimit, handle) / 1e3,
        "max_sm_clock_mhz": lambda: nvml_call(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM),
        "max_memory_clock_mhz": lambda: nvml_call(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_MEM),
        "applications_sm_clock_mhz": lambda: nvml_call(pynvml.nvmlDeviceGetApplicationsClock, handle,
                                                       pynvml.NVML_CLOCK_SM),
    }
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for name, query in queries.items():
        try:
            values[name] = query()
        except NvmlError as err:
            values[name] = None
            reasons[name] = str(err)
    return values, reasons


def gpu_info(device: torch.device) -> dict[str, Any]:
    """The GPU's identity, limits and clocks as a flat dict (every GPU_FIELDS key present)."""
    info: dict[str, Any] = dict.fromkeys(GPU_FIELDS)
    info["transformer_engine"] = te_version()
    if device.type != "cuda":
        return {**info, "null_reason": f"device is {device.type}: no GPU", "null_reasons": {}}
    props = torch.cuda.get_device_properties(device)
    info.update(name=props.name, count=torch.cuda.device_count(), uuid=torch_device_uuid(device),
                compute_capability=f"{props.major}.{props.minor}", total_memory_bytes=props.total_memory,
                cuda_runtime=torch.version.cuda)
    reasons: dict[str, str] = {}
    available = probe_nvml()
    if not available:
        reasons = {name: available.reason for name in GPU_FIELDS if info[name] is None and name != "transformer_engine"}
        return {**info, "null_reason": None, "null_reasons": reasons}
    try:
        with nvml_session():
            values, reasons = _nvml_fields(device)
    except NvmlError as err:
        values, reasons = {}, {"nvml": str(err)}
    info.update(values)
    return {**info, "null_reason": None, "null_reasons": reasons}

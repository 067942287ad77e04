"""Energy and power on CPU: pynvml patched with autospec, replaying an NVML log at NVML's cadence.

The replayed log is in NVML's units and update pattern (total-energy counter in mJ refreshed every
100 ms, power in mW averaged over the last second, °C, MHz, bytes), made here from a fixed profile:
a GPU idling at 90 W, ramping to 650 W under load. Each fake NVML call returns the latest log entry
at the fake clock's time, so window lengths, counter granularity and sampling are all deterministic.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from unittest import mock

import pynvml
import pytest
import torch

from teswap.benchmark.energy import (
    COUNTER_METHOD,
    SAMPLED_METHOD,
    EnergyWindow,
    PowerSampler,
    idle_power_w,
    trapezoid_energy_j,
)
from teswap.hardware.gpu_info import gpu_info
from teswap.hardware.nvml import NvmlError, NvmlPowerMeter, clear_nvml_probe, nvml_call, power_meter, probe_nvml

CPU = torch.device("cpu")  # the window's device: synchronising a CPU is a no-op, NVML is faked
TICK_S = 0.1  # NVML's energy counter refresh


@dataclass(frozen=True)
class Entry:
    t_s: float
    energy_mj: int
    power_mw: int
    temperature_c: int
    sm_clock_mhz: int
    memory_used_bytes: int


def recorded_log(duration_s: float = 20.0) -> list[Entry]:
    """One entry per 100 ms tick: 90 W idle for 1 s, then a ramp to 650 W, the counter integrating it."""
    entries, energy_mj = [], 0.0
    for tick in range(int(duration_s / TICK_S) + 1):
        t = tick * TICK_S
        power_w = 90.0 if t < 1.0 else min(650.0, 90.0 + 560.0 * (t - 1.0))
        energy_mj += power_w * TICK_S * 1e3
        entries.append(Entry(t, int(energy_mj), int(power_w * 1e3), 35 + int(t), 1980 if t >= 1.0 else 345,
                             (2 + int(t >= 1.0) * 60) * 2**30))
    return entries


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ReplayedNvml:
    """The NVML calls teswap makes, answered from the log at the fake clock's time."""

    def __init__(self, log: list[Entry], clock: FakeClock) -> None:
        self.log, self.clock = log, clock

    def entry(self) -> Entry:
        return self.log[min(int(math.floor(self.clock() / TICK_S + 1e-9)), len(self.log) - 1)]


HANDLE = object()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def nvml(clock):
    """pynvml patched (autospec: wrong arguments fail) to replay the log; yields the replay."""
    replay = ReplayedNvml(recorded_log(), clock)
    answers = {
        "nvmlInit": dict(return_value=None),
        "nvmlShutdown": dict(return_value=None),
        "nvmlDeviceGetCount": dict(return_value=1),
        "nvmlDeviceGetHandleByIndex": dict(return_value=HANDLE),
        "nvmlDeviceGetHandleByUUID": dict(return_value=HANDLE),
        "nvmlDeviceGetTotalEnergyConsumption": dict(side_effect=lambda h: replay.entry().energy_mj),
        "nvmlDeviceGetPowerUsage": dict(side_effect=lambda h: replay.entry().power_mw),
        "nvmlDeviceGetTemperature": dict(side_effect=lambda h, sensor: replay.entry().temperature_c),
        "nvmlDeviceGetClockInfo": dict(side_effect=lambda h, kind: replay.entry().sm_clock_mhz),
        "nvmlDeviceGetMemoryInfo": dict(side_effect=lambda h: mock.Mock(used=replay.entry().memory_used_bytes)),
    }
    clear_nvml_probe()
    with ExitStack() as stack:
        replay.mocks = {name: stack.enter_context(mock.patch(f"pynvml.{name}", autospec=True, **kwargs))
                        for name, kwargs in answers.items()}
        yield replay
    clear_nvml_probe()


def stepper(clock: FakeClock, step_s: float):
    """A 'step' that takes step_s of (fake) time."""
    return lambda: clock.advance(step_s)


def test_energy_is_the_counter_delta_over_a_window_extended_to_its_minimum(nvml, clock):
    clock.now = 2.0  # under load
    window = EnergyWindow(NvmlPowerMeter(HANDLE), CPU, min_window_s=1.0, sample_interval_s=3600, clock=clock)
    step = stepper(clock, 0.0625)  # exact in binary, so the window ends exactly at 1.0 s
    with window:
        for _ in range(6):  # the timed samples: 0.375 s, too short for a 100 ms counter to be worth much
            step()
        extra = window.extend_to(step)
    assert extra == 10 and window.elapsed_s() == 1.0
    log = recorded_log()
    expected_j = (log[30].energy_mj - log[20].energy_mj) / 1e3  # counter at t=3.0 s minus at t=2.0 s
    metrics = window.metrics(tokens=16 * 512, steps=16)
    assert metrics.energy_method == COUNTER_METHOD and metrics.energy_null_reason is None
    assert metrics.energy_j == pytest.approx(expected_j)
    assert metrics.energy_per_token_j == pytest.approx(expected_j / (16 * 512))
    assert metrics.power_avg_w == pytest.approx(expected_j / 1.0)
    assert metrics.energy_window_s == pytest.approx(1.0) and metrics.energy_window_steps == 16


def test_a_window_inside_one_counter_tick_is_null_with_the_reason(nvml, clock):
    clock.now = 2.01
    window = EnergyWindow(NvmlPowerMeter(HANDLE), CPU, min_window_s=0.0, sample_interval_s=3600, clock=clock)
    with window:
        stepper(clock, 0.05)()
    metrics = window.metrics(tokens=512, steps=1)
    assert metrics.energy_j is None and "did not advance" in metrics.energy_null_reason


def test_sampler_gives_peak_power_max_temperature_and_mean_clock(nvml, clock):
    clock.now = 0.5  # idle at start ...
    window = EnergyWindow(NvmlPowerMeter(HANDLE), CPU, min_window_s=0.0, sample_interval_s=3600, clock=clock)
    with window:
        window.sampler.sample_once()
        clock.advance(1.5)  # ... loaded at 2.0 s: 90 + 560 × 1.0 = 650 W
        window.sampler.sample_once()
        clock.advance(0.5)
    metrics = window.metrics(tokens=1, steps=1)
    assert metrics.power_peak_w == 650.0
    assert metrics.temperature_max_c == 37  # 35 + int(2.5)
    assert metrics.sm_clock_avg_mhz == pytest.approx((345 + 345 + 1980 + 1980) / 4)  # start, 2 manual, stop
    assert metrics.memory_used_max_bytes == 62 * 2**30


def test_without_an_energy_counter_energy_is_the_sampled_power_integral(nvml, clock):
    nvml.mocks["nvmlDeviceGetTotalEnergyConsumption"].side_effect = pynvml.NVMLError_NotSupported
    clock.now = 5.0  # flat 650 W
    window = EnergyWindow(NvmlPowerMeter(HANDLE), CPU, min_window_s=0.0, sample_interval_s=3600, clock=clock)
    with window:
        for _ in range(4):
            clock.advance(0.5)
            window.sampler.sample_once()
    metrics = window.metrics(tokens=100, steps=4)
    assert metrics.energy_method == SAMPLED_METHOD
    assert metrics.energy_j == pytest.approx(650.0 * 2.0)
    assert metrics.energy_j == pytest.approx(trapezoid_energy_j(window.sampler.samples))


def test_idle_baseline_averages_the_sampled_power(nvml, clock):
    clock.now = 0.0
    idle = idle_power_w(NvmlPowerMeter(HANDLE), 0.5, interval_s=0.1, sleep=clock.advance, clock=clock)
    assert idle == pytest.approx(90.0)


def test_sampler_thread_samples_until_stopped(nvml, clock):
    sampler = PowerSampler(NvmlPowerMeter(HANDLE), interval_s=0.001, clock=clock)
    with sampler:
        deadline = time.monotonic() + 5
        while len(sampler.samples) < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert len(sampler.samples) >= 6 and sampler._thread is None  # start, >= 4 in the thread, stop


def test_an_nvml_failure_in_the_sampler_thread_surfaces_at_stop(nvml, clock):
    sampler = PowerSampler(NvmlPowerMeter(HANDLE), interval_s=0.001, clock=clock)
    sampler.start()
    nvml.mocks["nvmlDeviceGetPowerUsage"].side_effect = pynvml.NVMLError_GpuIsLost
    with pytest.raises(NvmlError, match="nvmlDeviceGetPowerUsage"):
        deadline = time.monotonic() + 5
        while sampler.error is None and time.monotonic() < deadline:
            time.sleep(0.001)
        sampler.stop()


def test_nvml_errors_become_typed_errors_naming_the_call():
    with (mock.patch("pynvml.nvmlDeviceGetPowerUsage", autospec=True, side_effect=pynvml.NVMLError_Unknown),
          pytest.raises(NvmlError, match="nvmlDeviceGetPowerUsage failed")):
        nvml_call(pynvml.nvmlDeviceGetPowerUsage, HANDLE)


def test_without_nvml_every_energy_field_is_null_with_the_reason():
    clear_nvml_probe()
    try:
        with mock.patch("pynvml.nvmlInit", autospec=True, side_effect=pynvml.NVMLError_LibraryNotFound):
            assert not probe_nvml() and "NVML" in probe_nvml().reason
            with power_meter(torch.device("cuda", 0)) as (meter, reason):
                assert meter is None and reason == probe_nvml().reason
    finally:
        clear_nvml_probe()
    with power_meter(CPU) as (meter, reason):
        assert meter is None and "NVIDIA GPUs only" in reason
    window = EnergyWindow(None, CPU, null_reason=reason)
    with window:
        assert window.extend_to(lambda: pytest.fail("nothing to measure, nothing to extend")) == 0
    metrics = window.metrics(tokens=10, steps=1).to_dict()
    assert metrics["energy_null_reason"] == reason
    assert all(metrics[k] is None for k in ("energy_j", "energy_per_token_j", "power_avg_w", "power_peak_w",
                                            "temperature_max_c", "sm_clock_avg_mhz"))


def test_gpu_info_on_cpu_is_null_with_a_reason():
    info = gpu_info(CPU)
    assert info["name"] is None and info["uuid"] is None and info["null_reason"] == "device is cpu: no GPU"


def test_gpu_info_reads_limits_and_clocks_and_nulls_unsupported_ones(nvml, monkeypatch):
    from teswap.hardware import gpu_info as module

    monkeypatch.setattr(module, "nvml_handle", lambda device: HANDLE)
    with ExitStack() as stack:
        for name, kwargs in {
            "nvmlSystemGetDriverVersion": dict(return_value="570.86.15"),
            "nvmlSystemGetCudaDriverVersion": dict(return_value=12080),
            "nvmlDeviceGetEnforcedPowerLimit": dict(return_value=700_000),
            "nvmlDeviceGetPowerManagementDefaultLimit": dict(return_value=700_000),
            "nvmlDeviceGetMaxClockInfo": dict(side_effect=lambda h, kind: {pynvml.NVML_CLOCK_SM: 1980}.get(kind, 2619)),
            "nvmlDeviceGetApplicationsClock": dict(side_effect=pynvml.NVMLError_NotSupported),
        }.items():
            stack.enter_context(mock.patch(f"pynvml.{name}", autospec=True, **kwargs))
        values, reasons = module._nvml_fields(torch.device("cuda", 0))
    assert values["driver_version"] == "570.86.15" and values["cuda_driver_version"] == "12.8"
    assert values["power_limit_w"] == 700.0 and values["max_sm_clock_mhz"] == 1980
    assert values["max_memory_clock_mhz"] == 2619
    assert values["applications_sm_clock_mhz"] is None and "Not Supported" in reasons["applications_sm_clock_mhz"]

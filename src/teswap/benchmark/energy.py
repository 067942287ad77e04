"""Energy and power over a measured window: NVML's total-energy counter plus a background sampler.

The counter (mJ, Volta and newer) is read after synchronising the device at the start and end of
the timed window. It updates about every 100 ms, so a short window reads 0 or mostly rounding:
`EnergyWindow.extend_to` keeps running the step until the window has lasted a minimum duration
(ML.ENERGY found readings stable from ~5 s). A sampler thread reads power, temperature, SM clock and
memory used every `interval_s` for the peak and average figures. Where the GPU has no counter, energy
is the trapezoid integral of the sampled power; where there is no NVML at all every field is null
and `energy_null_reason` says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from teswap.benchmark.timing import Clock, Step, synchronize
from teswap.hardware.nvml import PowerMeter

COUNTER_METHOD = "nvml_total_energy_counter"
SAMPLED_METHOD = "nvml_power_samples_trapezoid"


@dataclass(frozen=True)
class PowerSample:
    t_s: float
    power_w: float
    temperature_c: float
    sm_clock_mhz: float
    memory_used_bytes: int


def read_sample(meter: PowerMeter, clock: Clock) -> PowerSample:
    return PowerSample(clock(), meter.power_w(), meter.temperature_c(), meter.sm_clock_mhz(),
                       meter.memory_used_bytes())


class PowerSampler:
    """Background thread sampling `meter` every `interval_s`, plus one sample at start and at stop."""

    def __init__(self, meter: PowerMeter, *, interval_s: float = 0.05, clock: Clock = time.perf_counter) -> None:
        self.meter = meter
        self.interval_s = interval_s
        self.clock = clock
        self.samples: list[PowerSample] = []
        self.error: BaseException | None = None  # an NVML failure in the thread, re-raised at stop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        self.samples.append(read_sample(self.meter, self.clock))

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.sample_once()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread at stop()
            self.error = err

    def start(self) -> None:
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="teswap-power-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error
        self.sample_once()

    def __enter__(self) -> PowerSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # already failing: stop the thread, keep the original error
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            return
        self.stop()


def trapezoid_energy_j(samples: list[PowerSample]) -> float:
    """∫ power dt over the samples, J."""
    return sum((b.t_s - a.t_s) * (a.power_w + b.power_w) / 2 for a, b in zip(samples, samples[1:], strict=False))


@dataclass(frozen=True, kw_only=True)
class EnergyMetrics:
    """Energy and power figures of one window; all None with `energy_null_reason` when unmeasured."""

    energy_j: float | None = None
    energy_per_token_j: float | None = None
    power_avg_w: float | None = None
    power_peak_w: float | None = None
    temperature_max_c: float | None = None
    sm_clock_avg_mhz: float | None = None
    memory_used_max_bytes: int | None = None
    energy_window_s: float | None = None
    energy_window_steps: int | None = None
    energy_method: str | None = None
    energy_null_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyWindow:
    """A measured window on one device: counter at begin/end, sampler in between (a context manager)."""

    def __init__(self, meter: PowerMeter | None, device: torch.device, *, null_reason: str | None = None,
                 min_window_s: float = 5.0, sample_interval_s: float = 0.05, clock: Clock = time.perf_counter) -> None:
        self.meter = meter
        self.device = device
        self.null_reason = null_reason or ("no power meter" if meter is None else None)
        self.min_window_s = min_window_s
        self.clock = clock
        self.sampler = PowerSampler(meter, interval_s=sample_interval_s, clock=clock) if meter else None
        self._start_s = self._end_s = 0.0
        self._start_mj: int | None = None
        self._end_mj: int | None = None

    def __enter__(self) -> EnergyWindow:
        synchronize(self.device)
        if self.meter is not None and self.sampler is not None:
            self.sampler.start()
            try:
                self._start_mj = self.meter.total_energy_mj()
            except BaseException as err:  # the window never opened: stop the thread it started
                self.sampler.__exit__(type(err), err, err.__traceback__)
                raise
        self._start_s = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                synchronize(self.device)
            self._end_s = self.clock()
            if self.meter is not None:
                self._end_mj = self.meter.total_energy_mj()
        finally:
            if self.sampler is not None:
                self.sampler.__exit__(*exc)

    def elapsed_s(self) -> float:
        return self.clock() - self._start_s

    def extend_to(self, step: Step, agree: Callable[[bool], bool] = bool) -> int:
        """Run `step` (synchronised) until the window has lasted min_window_s; the number of extra steps.

        Without a meter nothing is measured, so nothing is extended. `agree` turns this process's "not yet"
        into the launch's (every rank of a multi-rank run steps while any rank's window is short).
        """
        extra = 0
        if self.meter is None:
            return extra
        while agree(self.elapsed_s() < self.min_window_s):
            step()
            synchronize(self.device)
            extra += 1
        return extra

    def metrics(self, *, tokens: int, steps: int) -> EnergyMetrics:
        """The window's energy and power figures for `tokens` processed in `steps` steps."""
        if self.meter is None or self.sampler is None:
            return EnergyMetrics(energy_null_reason=self.null_reason)
        duration = self._end_s - self._start_s
        samples = self.sampler.samples
        if self._start_mj is not None and self._end_mj is not None:
            energy, method = (self._end_mj - self._start_mj) / 1e3, COUNTER_METHOD
        else:
            energy, method = trapezoid_energy_j(samples), SAMPLED_METHOD
        if energy <= 0 or duration <= 0:
            return EnergyMetrics(energy_window_s=duration, energy_window_steps=steps, energy_method=method,
                                 energy_null_reason=f"{method} did not advance over a {duration:.3f} s window; "
                                                    "raise the minimum energy window")
        return EnergyMetrics(
            energy_j=energy, energy_per_token_j=energy / tokens, power_avg_w=energy / duration,
            power_peak_w=max(s.power_w for s in samples),
            temperature_max_c=max(s.temperature_c for s in samples),
            sm_clock_avg_mhz=sum(s.sm_clock_mhz for s in samples) / len(samples),
            memory_used_max_bytes=max(s.memory_used_bytes for s in samples),
            energy_window_s=duration, energy_window_steps=steps, energy_method=method,
        )


def idle_power_w(meter: PowerMeter, duration_s: float, *, interval_s: float = 0.1,
                 sleep: Callable[[float], None] = time.sleep, clock: Clock = time.perf_counter) -> float:
    """Mean sampled power while nothing runs, over `duration_s` (the baseline before a sweep)."""
    samples = [read_sample(meter, clock)]
    started = clock()
    while clock() - started < duration_s:
        sleep(interval_s)
        samples.append(read_sample(meter, clock))
    return sum(s.power_w for s in samples) / len(samples)

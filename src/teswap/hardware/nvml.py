"""GPU power, energy, temperature and clocks behind a small interface; NVML (nvidia-ml-py) behind it.

`pynvml` is imported only inside the functions that call it, so importing this module touches no
driver. NVML failures become typed errors naming the call (as zeus maps NVML's error codes): the
ones a caller acts on have their own class (not supported, NVML unavailable, GPU lost, no
permission), every other code is a plain `NvmlError`. `probe_nvml` answers "can we read power here"
once, with the reason when we cannot (no pynvml, no driver, no GPU).
"""

from __future__ import annotations

import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from teswap.errors import TeswapError
from teswap.hardware.probe import Availability

T = TypeVar("T")


class NvmlError(TeswapError, RuntimeError):
    """An NVML call failed; the message names the call and NVML's own error string."""


class NvmlNotSupportedError(NvmlError):
    """This GPU or driver does not support the query (e.g. the energy counter before Volta)."""


class NvmlUnavailableError(NvmlError):
    """NVML cannot be used here: no library, no driver loaded, or not initialised."""


class NvmlGpuLostError(NvmlError):
    """The GPU fell off the bus or stopped answering; nothing more can be read from it."""


class NvmlPermissionError(NvmlError):
    """The query needs privileges this process lacks."""


# NVML return codes (nvml.h) -> the typed error raised for them.
_ERROR_CLASSES: dict[str, type[NvmlError]] = {
    "NVML_ERROR_NOT_SUPPORTED": NvmlNotSupportedError,
    "NVML_ERROR_LIBRARY_NOT_FOUND": NvmlUnavailableError,
    "NVML_ERROR_DRIVER_NOT_LOADED": NvmlUnavailableError,
    "NVML_ERROR_UNINITIALIZED": NvmlUnavailableError,
    "NVML_ERROR_GPU_IS_LOST": NvmlGpuLostError,
    "NVML_ERROR_NO_PERMISSION": NvmlPermissionError,
}


def typed_error(call: str, err: Exception) -> NvmlError:
    """NVML's exception `err` from `call` as the matching NvmlError subclass."""
    import pynvml

    code = getattr(err, "value", None)
    cls = next((klass for name, klass in _ERROR_CLASSES.items() if getattr(pynvml, name, object()) == code),
               NvmlError)
    error = cls(f"{call} failed: {err}")
    error.__cause__ = err
    return error


class PowerMeter(ABC):
    """One GPU's cumulative energy and instantaneous power, temperature, SM clock and memory."""

    @abstractmethod
    def total_energy_mj(self) -> int | None:
        """Energy since the driver loaded, in mJ; None where the GPU has no counter (pre-Volta)."""

    @abstractmethod
    def power_w(self) -> float:
        """Board power draw, W (NVML averages over ~1 s on Ampere and newer, GA100 excepted)."""

    @abstractmethod
    def temperature_c(self) -> float:
        """GPU die temperature, °C."""

    @abstractmethod
    def sm_clock_mhz(self) -> float:
        """Current SM clock, MHz."""

    @abstractmethod
    def memory_used_bytes(self) -> int:
        """Device memory in use by all processes, bytes."""

    def memory_clock_mhz(self) -> float:
        """Current memory clock, MHz (a meter that cannot read it raises NvmlNotSupportedError)."""
        raise NvmlNotSupportedError(f"{type(self).__name__} does not read the memory clock")

    def clock_event_reasons(self) -> int:
        """Why the clocks are below their maximum right now, as NVML's bit mask (CLOCK_EVENT_REASONS)."""
        raise NvmlNotSupportedError(f"{type(self).__name__} does not read clock event reasons")


def nvml_call(function: Callable[..., T], *args: Any) -> T:
    """Call an NVML function; its NVMLError becomes NvmlError naming the call."""
    import pynvml

    try:
        return function(*args)
    except pynvml.NVMLError as err:
        raise typed_error(getattr(function, "__name__", str(function)), err) from err


# NVML's clock event ("throttle") reason bits (nvml.h, nvmlClocksEventReason*), as names.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# The reasons that lower clocks for causes outside the benchmark (power cap, heat, an external brake):
# timings taken while one is active are not the GPU's steady speed. Idle, a clock setting and sync
# boost are not slowdowns of running work.
SLOWDOWN_REASONS = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                    "hw_power_brake_slowdown")


def clock_event_names(mask: int) -> list[str]:
    """The names of the reason bits set in `mask` (an unknown bit as its hex value)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    return names + ([f"0x{unknown:x}"] if unknown else [])


class NvmlPowerMeter(PowerMeter):
    """PowerMeter over one NVML device handle; call inside `nvml_session()`."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self._has_energy_counter: bool | None = None

    def total_energy_mj(self) -> int | None:
        import pynvml

        if self._has_energy_counter is False:
            return None
        try:
            value = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except pynvml.NVMLError_NotSupported:
            self._has_energy_counter = False
            return None
        except pynvml.NVMLError as err:
            raise typed_error("nvmlDeviceGetTotalEnergyConsumption", err) from err
        self._has_energy_counter = True
        return int(value)

    def power_w(self) -> float:
        import pynvml

        return nvml_call(pynvml.nvmlDeviceGetPowerUsage, self.handle) / 1e3  # mW

    def temperature_c(self) -> float:
        import pynvml

        return float(nvml_call(pynvml.nvmlDeviceGetTemperature, self.handle, pynvml.NVML_TEMPERATURE_GPU))

    def sm_clock_mhz(self) -> float:
        import pynvml

        return float(nvml_call(pynvml.nvmlDeviceGetClockInfo, self.handle, pynvml.NVML_CLOCK_SM))

    def memory_used_bytes(self) -> int:
        import pynvml

        return int(nvml_call(pynvml.nvmlDeviceGetMemoryInfo, self.handle).used)

    def memory_clock_mhz(self) -> float:
        import pynvml

        return float(nvml_call(pynvml.nvmlDeviceGetClockInfo, self.handle, pynvml.NVML_CLOCK_MEM))

    def clock_event_reasons(self) -> int:
        import pynvml

        # nvmlDeviceGetCurrentClocksEventReasons replaced ...ThrottleReasons (deprecated) in newer bindings.
        query = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(nvml_call(query, self.handle))


@contextmanager
def nvml_session() -> Iterator[None]:
    """nvmlInit ... nvmlShutdown (NVML counts inits, so nested sessions are fine)."""
    import pynvml

    nvml_call(pynvml.nvmlInit)
    try:
        yield
    finally:
        with contextlib.suppress(pynvml.NVMLError):  # a failed shutdown must not hide the session's outcome
            pynvml.nvmlShutdown()


@functools.cache
def probe_nvml() -> Availability:
    """Whether NVML can be read here, with the reason when it cannot."""
    try:
        import pynvml
    except ImportError:
        return Availability(False, "nvidia-ml-py (pynvml) is not installed")
    try:
        with nvml_session():
            count = nvml_call(pynvml.nvmlDeviceGetCount)
    except NvmlError as err:
        return Availability(False, f"NVML unavailable: {err.__cause__ or err}")
    if count == 0:
        return Availability(False, "NVML sees no GPU")
    return Availability(True)


def driver_version() -> str | None:
    """The NVIDIA driver's version as NVML reports it, or None where NVML cannot be read."""
    if not probe_nvml():
        return None
    import pynvml

    try:
        with nvml_session():
            driver = nvml_call(pynvml.nvmlSystemGetDriverVersion)
    except NvmlError:
        return None
    return driver.decode() if isinstance(driver, bytes) else str(driver)


def clear_nvml_probe() -> None:
    """Forget the cached probe (tests that patch pynvml)."""
    probe_nvml.cache_clear()


def torch_device_uuid(device: torch.device) -> str | None:
    """The GPU's UUID as NVML spells it ("GPU-..."), from torch's device properties when it has them."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith("GPU-") else f"GPU-{text}"


def nvml_handle(device: torch.device) -> Any:
    """The NVML handle of torch's `device`, matched by UUID (torch indices follow CUDA_VISIBLE_DEVICES,
    NVML's do not); by index when the UUID is unknown to NVML."""
    import pynvml

    uuid = torch_device_uuid(device)
    if uuid is not None:
        try:
            return nvml_call(pynvml.nvmlDeviceGetHandleByUUID, uuid)
        except NvmlError:
            pass  # e.g. a MIG instance's UUID: fall back to the index
    index = device.index if device.index is not None else torch.cuda.current_device()
    return nvml_call(pynvml.nvmlDeviceGetHandleByIndex, index)


@contextmanager
def power_meter(device: torch.device) -> Iterator[tuple[PowerMeter | None, str | None]]:
    """Yield (a meter for `device`, None) inside an NVML session, or (None, why there is none)."""
    if device.type != "cuda":
        yield None, f"device is {device.type}: NVML measures NVIDIA GPUs only"
        return
    available = probe_nvml()
    if not available:
        yield None, available.reason
        return
    with nvml_session():
        meter: PowerMeter | None = None
        reason: str | None = None
        try:
            meter = NvmlPowerMeter(nvml_handle(device))
        except NvmlError as err:
            reason = str(err)
        yield meter, reason

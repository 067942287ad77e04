"""GPU clocks while a cell is timed: SM and memory clock, temperature and NVML's clock event reasons,
read once after every timed block, and what they say about the cell's stability.

A reading that NVML cannot give (an older GPU, a meter without the query, no GPU at all) is left out
with its reason; the other readings still count. Clock locking is never done here: teswap only
reports what it sees (bench/README.md says how to lock clocks, and why that needs root).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from teswap.hardware.nvml import SLOWDOWN_REASONS, NvmlError, PowerMeter, clock_event_names


@dataclass(frozen=True, kw_only=True)
class ClockSnapshot:
    """One reading after a block; None where the meter could not say."""

    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    temperature_c: float | None = None
    event_reasons: int | None = None


def _read(query: Any, errors: dict[str, str], name: str) -> Any:
    try:
        return query()
    except NvmlError as err:
        errors.setdefault(name, str(err))
        return None


@dataclass(kw_only=True)
class ClockLog:
    """Readings of one measurement (a context without a meter reads nothing and says why)."""

    meter: PowerMeter | None
    null_reason: str | None = None
    snapshots: list[ClockSnapshot] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # reading -> why NVML could not give it

    def read(self) -> None:
        """Take one snapshot (nothing without a meter)."""
        if self.meter is None:
            return
        meter, errors = self.meter, self.errors
        self.snapshots.append(ClockSnapshot(
            sm_clock_mhz=_read(meter.sm_clock_mhz, errors, "sm_clock_mhz"),
            memory_clock_mhz=_read(meter.memory_clock_mhz, errors, "memory_clock_mhz"),
            temperature_c=_read(meter.temperature_c, errors, "temperature_c"),
            event_reasons=_read(meter.clock_event_reasons, errors, "event_reasons"),
        ))

    def values(self, name: str) -> list[float]:
        return [value for s in self.snapshots if (value := getattr(s, name)) is not None]

    def reasons_seen(self) -> list[str]:
        """Every clock event reason set in any snapshot, in NVML's bit order."""
        mask = 0
        for value in self.values("event_reasons"):
            mask |= int(value)
        return clock_event_names(mask)

    def slowdowns_seen(self) -> list[str]:
        return [name for name in self.reasons_seen() if name in SLOWDOWN_REASONS]

    def sm_clock_spread(self) -> float | None:
        """(max - min) / max of the SM clock over the snapshots; None without two readings."""
        clocks = self.values("sm_clock_mhz")
        if len(clocks) < 2 or not max(clocks) > 0:
            return None
        return (max(clocks) - min(clocks)) / max(clocks)

    def to_dict(self) -> dict[str, Any]:
        """The record's "clocks" field: ranges over the snapshots, reasons seen, and why any is missing."""
        if self.meter is None:
            return {"snapshots": 0, "null_reason": self.null_reason or "no power meter"}
        out: dict[str, Any] = {"snapshots": len(self.snapshots)}
        for name in ("sm_clock_mhz", "memory_clock_mhz"):
            values = self.values(name)
            stem = name.removesuffix("_mhz")
            out.update({f"{stem}_min_mhz": min(values) if values else None,
                        f"{stem}_max_mhz": max(values) if values else None,
                        f"{stem}_mean_mhz": sum(values) / len(values) if values else None})
        temperatures = self.values("temperature_c")
        out["temperature_max_c"] = max(temperatures) if temperatures else None
        out["event_reasons"] = self.reasons_seen()
        out["slowdown_reasons"] = self.slowdowns_seen()
        out["null_reasons"] = dict(self.errors)
        return out

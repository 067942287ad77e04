"""Named, versioned tolerance policies, and the pure rule that turns metrics into a verdict.

A run measures error(stock@P vs ref) and error(swapped@P vs ref), ref being a high-precision run of
the stock model with the same weights. A policy bounds the swapped numbers two ways:

- absolute:          swapped ≤ value (kind "max")   or   swapped ≥ value (kind "min");
- relative to stock: swapped's shortfall ≤ factor × stock's shortfall + slack, where a metric's
  shortfall is its distance from the perfect score: the value itself for error-like ("max") metrics,
  1 − value for agreement-like ("min") ones. So "max": swapped ≤ factor·stock + slack, and
  "min": swapped ≥ 1 − factor·(1 − stock) − slack. sqnr_db has no finite perfect score: absolute only.

Factors are set by how a metric scales with the error amplitude ε: linear ones (robust_rel,
gradient norm error, top-1 flips) get 2 (swapped may be twice as far off as stock, −6 dB);
quadratic ones (kl_div ≈ ½·Var(δ), 1 − cosine ≈ ½·ε²) get 2² = 4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from teswap.errors import TeswapError

Kind = Literal["max", "min"]
RELATIVE_SUFFIX = "_vs_stock"

# Every metric a policy may bound: its kind and its perfect score (what the relative rule measures
# the shortfall from). Names match teswap.parity.metrics' as_dict() / grad_summary() keys.
METRICS: dict[str, tuple[Kind, float]] = {
    "max_abs": ("max", 0.0),
    "mean_abs": ("max", 0.0),
    "robust_rel": ("max", 0.0),
    "cosine": ("min", 1.0),
    "sqnr_db": ("min", math.inf),
    "kl_div": ("max", 0.0),
    "top1_agreement": ("min", 1.0),
    "top5_agreement": ("min", 1.0),
    "loss_diff": ("max", 0.0),
    "grad_rel_norm_error": ("max", 0.0),
    "grad_cosine": ("min", 1.0),
    "prefix_match_rate": ("min", 1.0),
    "overall_match_rate": ("min", 1.0),
}


class PolicyError(TeswapError, ValueError):
    """A policy name, file, bound or override is invalid, or a run lacks a metric a policy bounds."""


@dataclass(frozen=True, kw_only=True)
class Bound:
    """One limit on one metric: absolute, or relative to the stock model at the same precision."""

    metric: str
    kind: Kind  # "max": the swapped value must be ≤ the limit; "min": ≥
    value: float  # the limit when absolute; the factor on stock's shortfall when relative
    relative_to_stock: bool = False
    slack: float = 0.0  # relative bounds only: shortfall allowed on top of factor × stock's
    provenance: str

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise PolicyError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        expected_kind, perfect = METRICS[self.metric]
        if self.kind != expected_kind:
            raise PolicyError(f"{self.metric} is bounded with kind {expected_kind!r}, not {self.kind!r}")
        if math.isnan(self.value):
            raise PolicyError(f"bound {self.name}: value is NaN")
        if not self.relative_to_stock and self.slack != 0.0:
            raise PolicyError(f"bound {self.name}: slack applies only to relative bounds")
        if self.relative_to_stock:
            if not math.isfinite(perfect):
                raise PolicyError(f"{self.metric} has no finite perfect score; give it an absolute bound")
            if not (math.isfinite(self.value) and self.value >= 0 and math.isfinite(self.slack)
                    and self.slack >= 0):
                raise PolicyError(f"bound {self.name}: factor and slack must be finite and ≥ 0")

    @property
    def name(self) -> str:
        """The key of this bound in a policy: the metric, plus "_vs_stock" when relative."""
        return self.metric + (RELATIVE_SUFFIX if self.relative_to_stock else "")

    def limit(self, stock_value: float | None) -> float:
        """The threshold the swapped value is compared with."""
        if not self.relative_to_stock:
            return self.value
        if stock_value is None:
            raise PolicyError(f"bound {self.name} needs the stock model's {self.metric}")
        perfect = METRICS[self.metric][1]
        if self.kind == "max":
            return self.value * stock_value + self.slack
        return perfect - self.value * (perfect - stock_value) - self.slack

    def rule(self) -> str:
        """The bound as a formula, e.g. "≤ 4 × stock + 1e-05"."""
        sign = "≤" if self.kind == "max" else "≥"
        if not self.relative_to_stock:
            return f"{sign} {self.value:g}"
        if self.kind == "max":
            return f"≤ {self.value:g} × stock + {self.slack:g}"
        return f"≥ 1 − {self.value:g} × (1 − stock) − {self.slack:g}"

    def admits(self, value: float, stock_value: float | None) -> bool:
        """Whether `value` satisfies this bound; NaN never does."""
        limit = self.limit(stock_value)
        if math.isnan(value) or math.isnan(limit):
            return False
        return value <= limit if self.kind == "max" else value >= limit


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A named, versioned set of bounds, keyed by `Bound.name`. Treat `bounds` as read-only."""

    name: str
    version: int
    description: str
    provenance: str
    bounds: dict[str, Bound]

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", dict(self.bounds))  # the caller's dict may change later
        wrong = [key for key, bound in self.bounds.items() if key != bound.name]
        if wrong:
            raise PolicyError(f"policy {self.name}: keys {wrong} do not match their bounds' names")
        if not self.name or not self.bounds:
            raise PolicyError("a policy needs a name and at least one bound")

    def to_dict(self) -> dict[str, Any]:
        """The policy in the JSON shape `get_policy` reads (a full policy, no "base")."""
        bounds = {key: {f: v for f, v in asdict(b).items() if f not in ("metric", "relative_to_stock")}
                  for key, b in self.bounds.items()}
        return {"name": self.name, "version": self.version, "description": self.description,
                "provenance": self.provenance, "bounds": bounds}


@dataclass(frozen=True, kw_only=True)
class BoundCheck:
    """One row of a verdict: one bound applied to the swapped (and stock) value."""

    bound: str
    metric: str
    value: float
    stock_value: float | None
    limit: float
    rule: str
    passed: bool


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Whether the swapped model met every bound of a policy, row by row."""

    policy: str  # "name v<version>"
    passed: bool  # every row passed, and at least one row was checked
    rows: tuple[BoundCheck, ...]
    skipped: tuple[str, ...]  # bounds not checked because a metric was missing (missing="skip")

    @property
    def failures(self) -> tuple[BoundCheck, ...]:
        """The rows that did not pass."""
        return tuple(row for row in self.rows if not row.passed)


def evaluate(policy: Policy, swapped: Mapping[str, float], stock: Mapping[str, float], *,
             missing: Literal["error", "skip"] = "error") -> Verdict:
    """Check every bound of `policy`; a metric the run did not report raises, or is skipped."""
    rows, skipped, lacking = [], [], []
    for key, bound in policy.bounds.items():
        needs_stock = bound.relative_to_stock and bound.metric not in stock
        if bound.metric not in swapped or needs_stock:
            skipped.append(key)
            lacking.append(f"{'stock' if needs_stock else 'swapped'} {bound.metric}")
            continue
        value, stock_value = float(swapped[bound.metric]), _optional_float(stock.get(bound.metric))
        rows.append(BoundCheck(bound=key, metric=bound.metric, value=value, stock_value=stock_value,
                               limit=bound.limit(stock_value), rule=bound.rule(),
                               passed=bound.admits(value, stock_value)))
    if lacking and missing == "error":
        raise PolicyError(f"policy {policy.name} bounds metrics the run did not report: {', '.join(lacking)}")
    return Verdict(policy=f"{policy.name} v{policy.version}", passed=bool(rows) and all(r.passed for r in rows),
                   rows=tuple(rows), skipped=tuple(skipped))


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)

"""The rule that turns metrics into two verdicts: is the swap the same model, and is the precision fit?

A run measures error(stock@P vs ref) and error(swapped@P vs ref), ref being a high-precision run of
the stock model on the same weights. "Same model" is judged against stock at the same precision: a
swap is wrong when it is worse than stock, not when the precision itself is lossy. So a policy has
two kinds of bound, and they give two separate verdicts:

- relative to stock (the SWAP verdict, which sets the exit code): swapped's shortfall ≤ factor ×
  stock's shortfall + slack, where a metric's shortfall is its distance from the perfect score (the
  value for error-like "max" metrics, 1 − value for agreement-like "min" ones). Optionally also
  swapped's shortfall ≥ lower × stock's: a swapped model far MORE accurate than stock at a lossy
  precision is not running that precision (FP8 quantization skipped, say). Where the run gives
  per-position (or per-prompt) samples of a metric, the bound is judged by a paired block bootstrap
  (teswap.parity.paired): it fails only when the 95% interval lies wholly beyond it. A swap equal to
  stock therefore never fails; a wrong weight, RoPE or GEMM moves the whole interval far away.
- absolute (the PRECISION verdict): stock ≤ value (or ≥ for "min"), applied to stock and swapped
  alike. When stock fails one, the precision is too lossy for this model ("stock fails it too"):
  that is reported beside the swap verdict and never turns a swap that matches stock into a FAIL.

Factors follow how a metric scales with the error amplitude ε: linear ones (rel_rms, gradient norm
error, top-1 flips) get 2 (−6 dB), quadratic ones (kl_div ≈ ½·Var(δ)) get 2² = 4.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from teswap.errors import TeswapError
from teswap.parity.paired import PairedSamples, interval

Kind = Literal["max", "min"]
RELATIVE_SUFFIX = "_vs_stock"

# Every metric a policy may bound: its kind and its perfect score (what the relative rule measures
# the shortfall from). Names match the keys of teswap.parity.case's metric dicts.
METRICS: dict[str, tuple[Kind, float]] = {
    "max_abs": ("max", 0.0),
    "mean_abs": ("max", 0.0),
    "robust_rel": ("max", 0.0),
    "rel_rms": ("max", 0.0),
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
    """One limit on one metric: absolute (the precision verdict), or relative to stock (the swap verdict)."""

    metric: str
    kind: Kind  # "max": the swapped value must be ≤ the limit; "min": ≥
    value: float  # the limit when absolute; the factor on stock's shortfall when relative
    relative_to_stock: bool = False
    slack: float = 0.0  # relative bounds only: shortfall allowed on top of factor × stock's
    lower: float | None = None  # relative only: swapped's shortfall must be ≥ lower × stock's
    provenance: str

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise PolicyError(f"unknown metric {self.metric!r}; known: {', '.join(METRICS)}")
        expected_kind, perfect = METRICS[self.metric]
        if self.kind != expected_kind:
            raise PolicyError(f"{self.metric} is bounded with kind {expected_kind!r}, not {self.kind!r}")
        if math.isnan(self.value):
            raise PolicyError(f"bound {self.name}: value is NaN")
        if not self.relative_to_stock and (self.slack != 0.0 or self.lower is not None):
            raise PolicyError(f"bound {self.name}: slack and lower apply only to relative bounds")
        if self.relative_to_stock:
            if not math.isfinite(perfect):
                raise PolicyError(f"{self.metric} has no finite perfect score; give it an absolute bound")
            if not (math.isfinite(self.value) and self.value >= 0 and math.isfinite(self.slack)
                    and self.slack >= 0):
                raise PolicyError(f"bound {self.name}: factor and slack must be finite and ≥ 0")
            if self.lower is not None and not 0 <= self.lower < self.value:
                raise PolicyError(f"bound {self.name}: lower must be ≥ 0 and below the factor {self.value:g}")

    @property
    def name(self) -> str:
        """The key of this bound in a policy: the metric, plus "_vs_stock" when relative."""
        return self.metric + (RELATIVE_SUFFIX if self.relative_to_stock else "")

    def shortfall(self, value: float) -> float:
        """Distance of `value` from the metric's perfect score."""
        perfect = METRICS[self.metric][1]
        return value - perfect if self.kind == "max" else perfect - value

    def limit(self, stock_value: float | None) -> float:
        """The threshold the swapped value is compared with (the upper one for relative bounds)."""
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
        floor = "" if self.lower is None else f", shortfall ≥ {self.lower:g} × stock's"
        if self.kind == "max":
            return f"≤ {self.value:g} × stock + {self.slack:g}{floor}"
        return f"≥ 1 − {self.value:g} × (1 − stock) − {self.slack:g}{floor}"

    def excess(self, value: float, stock_value: float | None) -> float:
        """How far `value` is beyond the limit (> 0 violates; NaN counts as beyond)."""
        limit = self.limit(stock_value)
        gap = value - limit if self.kind == "max" else limit - value
        return math.inf if math.isnan(gap) else gap

    def deficit(self, value: float, stock_value: float) -> float:
        """How far swapped's shortfall is below lower × stock's (> 0: implausibly better than stock)."""
        return -math.inf if self.lower is None else self.lower * self.shortfall(stock_value) - self.shortfall(value)

    def admits(self, value: float, stock_value: float | None) -> bool:
        """Whether `value` satisfies this bound as a point estimate; NaN never does."""
        if self.excess(value, stock_value) > 0:
            return False
        return not (self.relative_to_stock and stock_value is not None and self.deficit(value, stock_value) > 0)


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
        bounds = {key: {f: v for f, v in asdict(b).items()
                        if f not in ("metric", "relative_to_stock") and not (f == "lower" and v is None)}
                  for key, b in self.bounds.items()}
        return {"name": self.name, "version": self.version, "description": self.description,
                "provenance": self.provenance, "bounds": bounds}


@dataclass(frozen=True, kw_only=True)
class BoundCheck:
    """One row of a verdict: one bound applied to the swapped (and stock) value.

    Relative rows judged on samples carry the 95% interval of swapped/stock shortfall (`ratio_ci`);
    absolute rows say whether stock meets the bound too (`stock_passed`).
    """

    bound: str
    metric: str
    value: float
    stock_value: float | None
    limit: float
    rule: str
    passed: bool
    judged: str = "point"  # "point", or "bootstrap" over paired samples
    ratio: float | None = None  # swapped shortfall / stock shortfall
    ratio_ci: tuple[float, float] | None = None
    failure: str | None = None  # "worse than stock", "better than stock", "beyond the bound"
    stock_passed: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The swap verdict (relative rows) and the precision verdict (absolute rows) of one run."""

    policy: str  # "name v<version>"
    passed: bool  # the SWAP verdict: every relative row passed, and at least one row was checked
    rows: tuple[BoundCheck, ...]  # relative to stock: the swap verdict
    precision_rows: tuple[BoundCheck, ...] = ()  # absolute: the precision verdict
    skipped: tuple[str, ...] = ()  # bounds not checked because a metric was missing (missing="skip")

    @property
    def failures(self) -> tuple[BoundCheck, ...]:
        """The swap rows that did not pass."""
        return tuple(row for row in self.rows if not row.passed)

    @property
    def precision_passed(self) -> bool:
        """Whether stock itself meets every absolute bound: the precision is fit for this model."""
        return all(row.stock_passed is not False for row in self.precision_rows)

    @property
    def precision_failures(self) -> tuple[BoundCheck, ...]:
        """Absolute rows that stock fails (the precision is too lossy for this model)."""
        return tuple(row for row in self.precision_rows if row.stock_passed is False)


def evaluate(policy: Policy, swapped: Mapping[str, float], stock: Mapping[str, float], *,
             samples: Mapping[str, PairedSamples] | None = None,
             missing: Literal["error", "skip"] = "error") -> Verdict:
    """Check every bound of `policy`; relative ones on `samples` where given. A missing metric raises or is skipped."""
    rows, precision_rows, skipped, lacking = [], [], [], []
    for key, bound in policy.bounds.items():
        needs_stock = bound.metric not in stock
        if bound.metric not in swapped or (bound.relative_to_stock and needs_stock):
            skipped.append(key)
            lacking.append(f"{'stock' if bound.metric in swapped else 'swapped'} {bound.metric}")
            continue
        value, stock_value = float(swapped[bound.metric]), _optional_float(stock.get(bound.metric))
        if not bound.relative_to_stock:
            precision_rows.append(_absolute_row(key, bound, value, stock_value))
        elif samples and bound.metric in samples:
            rows.append(_bootstrap_row(key, bound, samples[bound.metric]))
        else:
            rows.append(_point_row(key, bound, value, stock_value))  # type: ignore[arg-type]
    if lacking and missing == "error":
        raise PolicyError(f"policy {policy.name} bounds metrics the run did not report: {', '.join(lacking)}")
    return Verdict(policy=f"{policy.name} v{policy.version}", passed=bool(rows) and all(r.passed for r in rows),
                   rows=tuple(rows), precision_rows=tuple(precision_rows), skipped=tuple(skipped))


def _absolute_row(key: str, bound: Bound, value: float, stock_value: float | None) -> BoundCheck:
    passed = bound.admits(value, None)
    return BoundCheck(bound=key, metric=bound.metric, value=value, stock_value=stock_value,
                      limit=bound.value, rule=bound.rule(), passed=passed,
                      failure=None if passed else "beyond the bound",
                      stock_passed=None if stock_value is None else bound.admits(stock_value, None))


def _point_row(key: str, bound: Bound, value: float, stock_value: float) -> BoundCheck:
    failure = ("worse than stock" if bound.excess(value, stock_value) > 0
               else "better than stock" if bound.deficit(value, stock_value) > 0 else None)
    return BoundCheck(bound=key, metric=bound.metric, value=value, stock_value=stock_value,
                      limit=bound.limit(stock_value), rule=bound.rule(), passed=failure is None,
                      ratio=_ratio(bound, value, stock_value), failure=failure)


def _bootstrap_row(key: str, bound: Bound, samples: PairedSamples) -> BoundCheck:
    """Fail only when the 95% interval of the excess (or deficit) lies wholly beyond zero."""
    value, stock_value = samples.values()
    swapped_draws, stock_draws = samples.resampled()
    shortfall = bound.shortfall
    excess = [bound.excess(float(s), float(k)) for s, k in zip(swapped_draws, stock_draws, strict=True)]
    failure = "worse than stock" if _low(excess) > 0 else None
    if failure is None and bound.lower is not None:
        deficit = [bound.deficit(float(s), float(k)) for s, k in zip(swapped_draws, stock_draws, strict=True)]
        failure = "better than stock" if _low(deficit) > 0 else None
    ratios = [shortfall(float(s)) / shortfall(float(k)) for s, k in zip(swapped_draws, stock_draws, strict=True)
              if shortfall(float(k)) > 0]
    ratio_ci = None
    if len(ratios) >= len(excess) // 2:
        import torch

        ratio_ci = interval(torch.tensor(ratios))
    return BoundCheck(bound=key, metric=bound.metric, value=value, stock_value=stock_value,
                      limit=bound.limit(stock_value), rule=bound.rule(), passed=failure is None, judged="bootstrap",
                      ratio=_ratio(bound, value, stock_value), ratio_ci=ratio_ci, failure=failure)


def _low(values: list[float]) -> float:
    """The lower end of the 95% interval of bootstrap values."""
    ordered = sorted(values)
    return ordered[int(0.025 * (len(ordered) - 1))]


def _ratio(bound: Bound, value: float, stock_value: float) -> float | None:
    denominator = bound.shortfall(stock_value)
    return None if denominator <= 0 else bound.shortfall(value) / denominator


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)

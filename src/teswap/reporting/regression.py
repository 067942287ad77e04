"""Did a commit change a configuration's speed? Mann-Whitney U on the timing samples plus a minimum
effect size, per configuration, between a base and a head commit (asv's rule).

A swapped configuration measured paired with stock at both commits is judged on its per-round
speedups over stock instead of its raw step times (`basis` "paired speedup"): each round's ratio
was taken with both models under the same machine conditions, so a machine that was busier during
one commit's run does not read as a regression of the swap. The stock configurations themselves,
and anything measured unpaired, are judged on their step times (`basis` "step time").

A configuration regressed when its samples differ at p < alpha AND the head's median time is more
than `factor` times the base's; it improved under the mirror condition. Why alpha = 0.002 (asv's
value) for our 10-50 samples per cell: the exact test still reaches it from 8 samples per side
(smallest p at 8 vs 8 is 1.6e-4), a 10% throughput step with the 2-5% run-to-run noise of GPU
timings separates the samples far below it, and one `teswap compare` tests tens of configurations
at once, so 0.002 keeps the chance of a false alarm per comparison at a few percent even before
the effect-size gate, which removes nearly all of the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from teswap.reporting.errors import CrossMachineError, ReportError
from teswap.reporting.frame import CELL_COLUMNS, CELL_FIELDS, select
from teswap.reporting.mannwhitney import mann_whitney_u, smallest_p
from teswap.statistics import round_ratios

IMPROVED, REGRESSED, NO_CHANGE, TOO_FEW = "improved", "regressed", "no significant change", "too few samples"
BROKEN, FIXED, ONLY_BASE, ONLY_HEAD = "broken in head", "fixed in head", "only in base", "only in head"
NOT_MEASURED = "failed at both"
PAIRED_BASIS, TIME_BASIS = "paired speedup", "step time"
# Verdicts that make `teswap compare` exit 1: slower, or a cell that ran at base and fails at head.
FAILING_VERDICTS = (REGRESSED, BROKEN)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When a difference counts: p below `alpha` and a median ratio beyond `factor` (asv's --factor)."""

    factor: float = 1.05
    alpha: float = 0.002

    def __post_init__(self) -> None:
        if not self.factor >= 1.0:
            raise ReportError(f"factor must be >= 1 (1.05 = a 5% change in the median), got {self.factor}")
        if not 0.0 < self.alpha < 1.0:
            raise ReportError(f"alpha must be in (0, 1), got {self.alpha}")


DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, kw_only=True)
class SampleComparison:
    """The verdict on two samples: ratio = median(head) / median(base)."""

    verdict: str
    ratio: float
    p_value: float
    base_n: int
    head_n: int


def compare_samples(base: Sequence[float], head: Sequence[float], thresholds: Thresholds = DEFAULT_THRESHOLDS,
                    *, bigger_is_better: bool = False) -> SampleComparison:
    """improved / regressed / no significant change / too few samples, for head against base."""
    base_arr, head_arr = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    ratio = float(np.median(head_arr) / np.median(base_arr))
    test = mann_whitney_u(head_arr, base_arr)
    sizes = {"base_n": len(base_arr), "head_n": len(head_arr)}
    if smallest_p(len(base_arr), len(head_arr)) >= thresholds.alpha:
        return SampleComparison(verdict=TOO_FEW, ratio=ratio, p_value=test.p_value, **sizes)
    worse = ratio < 1 / thresholds.factor if bigger_is_better else ratio > thresholds.factor
    better = ratio > thresholds.factor if bigger_is_better else ratio < 1 / thresholds.factor
    verdict = NO_CHANGE
    if test.p_value < thresholds.alpha:
        verdict = REGRESSED if worse else IMPROVED if better else NO_CHANGE
    return SampleComparison(verdict=verdict, ratio=ratio, p_value=test.p_value, **sizes)


def pooled_samples(rows: pd.DataFrame) -> list[float]:
    """All timing samples of the ok records in `rows` (repeated runs of one cell are pooled)."""
    ok = rows[rows["status"] == "ok"]
    return [float(s) for samples in ok["stats.samples_s"] if isinstance(samples, list) for s in samples]


def paired_speedups(rows: pd.DataFrame) -> list[float]:
    """Every paired round's speedup over stock in the ok records of `rows` (none for unpaired records)."""
    ok = rows[rows["status"] == "ok"]
    speedups: list[float] = []
    for baseline, measured in zip(ok["paired.baseline_samples_s"], ok["paired.samples_s"], strict=True):
        if isinstance(baseline, list) and isinstance(measured, list) and baseline:
            speedups.extend(float(r) for r in round_ratios(baseline, measured))
    return speedups


def check_machines(base: pd.DataFrame, head: pd.DataFrame, allow_cross_machine: bool) -> None:
    """Refuse to compare commits measured on different machines unless told to."""
    base_machines, head_machines = set(base["machine"]), set(head["machine"])
    if base_machines != head_machines and not allow_cross_machine:
        raise CrossMachineError(
            f"base was measured on {', '.join(sorted(base_machines))} and head on "
            f"{', '.join(sorted(head_machines))}; timings from different machines are not comparable "
            "(pass --machine to pick one both share, or --allow-cross-machine to compare anyway)")


def compare_commits(bench: pd.DataFrame, base_sha: str, head_sha: str, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                    *, allow_cross_machine: bool = False, include_dirty: bool = False) -> pd.DataFrame:
    """One row per configuration measured at base or head: medians, ratio, p-value and verdict."""
    base = select(bench, sha=base_sha, include_dirty=include_dirty)
    head = select(bench, sha=head_sha, include_dirty=include_dirty)
    for name, part, sha in (("base", base, base_sha), ("head", head, head_sha)):
        if part.empty:
            raise ReportError(f"{name} commit {sha[:7]} has no benchmark records"
                              + ("" if include_dirty else " from a clean tree (--include-dirty to use dirty ones)"))
    check_machines(base, head, allow_cross_machine)
    key = list(CELL_COLUMNS) if allow_cross_machine else ["machine", *CELL_COLUMNS]
    keys = pd.concat([base[key], head[key]]).drop_duplicates()
    rows = [_compare_key(dict(zip(key, values, strict=True)), base, head, thresholds)
            for values in keys.itertuples(index=False)]
    table = pd.DataFrame(rows)
    order = {v: i for i, v in enumerate((REGRESSED, BROKEN, IMPROVED, FIXED, TOO_FEW, NO_CHANGE, ONLY_BASE,
                                         ONLY_HEAD, NOT_MEASURED))}
    table["_order"] = table["verdict"].map(order)
    sort = ["_order", *(c for c in ("machine", *CELL_FIELDS) if c in table)]
    return table.sort_values(sort).drop(columns="_order").reset_index(drop=True)


def _compare_key(key: dict, base: pd.DataFrame, head: pd.DataFrame, thresholds: Thresholds) -> dict:
    mask_base = np.logical_and.reduce([base[c] == v for c, v in key.items()])
    mask_head = np.logical_and.reduce([head[c] == v for c, v in key.items()])
    base_rows, head_rows = base[mask_base], head[mask_head]
    row = {name.removeprefix("cell."): value for name, value in key.items()}
    base_samples, head_samples = pooled_samples(base_rows), pooled_samples(head_rows)
    base_speedups, head_speedups = paired_speedups(base_rows), paired_speedups(head_rows)
    row.update(base_median_s=float(np.median(base_samples)) if base_samples else np.nan,
               head_median_s=float(np.median(head_samples)) if head_samples else np.nan,
               base_speedup=float(np.median(base_speedups)) if base_speedups else np.nan,
               head_speedup=float(np.median(head_speedups)) if head_speedups else np.nan,
               ratio=np.nan, throughput_change=np.nan, p_value=np.nan, basis=TIME_BASIS,
               base_n=len(base_samples), head_n=len(head_samples),
               base_status=_statuses(base_rows), head_status=_statuses(head_rows))
    if base_speedups and head_speedups:
        result = compare_samples(base_speedups, head_speedups, thresholds, bigger_is_better=True)
        # ratio stays "head time over base time" (here: relative to stock), so > factor reads as slower
        row.update(verdict=result.verdict, ratio=1 / result.ratio, p_value=result.p_value,
                   throughput_change=result.ratio - 1, basis=PAIRED_BASIS, base_n=len(base_speedups),
                   head_n=len(head_speedups))
    elif base_samples and head_samples:
        result = compare_samples(base_samples, head_samples, thresholds)
        row.update(verdict=result.verdict, ratio=result.ratio, p_value=result.p_value,
                   throughput_change=1 / result.ratio - 1)
    elif base_rows.empty or head_rows.empty:
        row["verdict"] = ONLY_HEAD if base_rows.empty else ONLY_BASE
    elif base_samples:
        row["verdict"] = BROKEN
    else:
        row["verdict"] = FIXED if head_samples else NOT_MEASURED
    return row


def _statuses(rows: pd.DataFrame) -> str:
    return ",".join(sorted(set(rows["status"].astype(str))))


def count_verdicts(table: pd.DataFrame) -> dict[str, int]:
    """How many configurations got each verdict."""
    return {str(k): int(v) for k, v in table["verdict"].value_counts().items()}


def has_regression(table: pd.DataFrame) -> bool:
    """True when some configuration regressed or broke (what makes `teswap compare` exit 1)."""
    return bool(table["verdict"].isin(FAILING_VERDICTS).any())

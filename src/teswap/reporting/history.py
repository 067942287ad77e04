"""Per-commit history: one configuration's samples at every stored commit, oldest first, each
commit's step from the previous one judged by the regression rule, and a table of the commits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from teswap.reporting.commits import commit_order, git_commit_times
from teswap.reporting.errors import ReportError
from teswap.reporting.frame import ConfigKey, config_keys
from teswap.reporting.regression import DEFAULT_THRESHOLDS, Thresholds, compare_samples, pooled_samples

# Metrics whose per-commit spread comes from the timing samples: name -> (bigger is better, axis label).
HISTORY_METRICS = {
    "tokens_per_s": (True, "tokens/s"),
    "time_s": (False, "time per iteration (s)"),
}


def _tokens_per_sample(row: pd.Series) -> float:
    # The harness's own tokens/s times its median time gives the tokens one sample processed, so
    # sample throughputs agree with the recorded tokens_per_s whatever a workload counts as a token.
    tokens_per_s, median_s = row.get("metrics.tokens_per_s"), row.get("stats.median_s")
    if pd.notna(tokens_per_s) and pd.notna(median_s):
        return float(tokens_per_s) * float(median_s)
    return float(row["cell.batch"]) * float(row["cell.seq_len"])


def metric_samples(rows: pd.DataFrame, metric: str) -> list[float]:
    """The samples of `metric` in the ok records of `rows`: timing samples, or throughput per sample."""
    if metric not in HISTORY_METRICS:
        raise ReportError(f"unknown history metric {metric!r}; choose one of: {', '.join(HISTORY_METRICS)}")
    values: list[float] = []
    for _, row in rows[rows["status"] == "ok"].iterrows():
        samples = row["stats.samples_s"]
        if not isinstance(samples, list):
            continue
        scale = _tokens_per_sample(row) if metric == "tokens_per_s" else None
        values.extend(scale / s if scale is not None else float(s) for s in samples)
    return values


def history_frame(bench: pd.DataFrame, key: ConfigKey, metric: str = "tokens_per_s", *,
                  repo: Path | str | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                  include_dirty: bool = False, order: list[str] | None = None) -> pd.DataFrame:
    """One row per commit with records of `key`: the metric's samples and spread, and the verdict
    (improved / regressed / ...) of that commit's timing samples against the previous commit's."""
    rows = bench[key.mask(bench) & (include_dirty | ~bench["dirty"])]
    order = [sha for sha in (order if order is not None else commit_order(rows, repo)) if sha in set(rows["sha"])]
    bigger = HISTORY_METRICS.get(metric, (True, ""))[0]
    out, previous = [], None
    for sha in order:
        at = rows[rows["sha"] == sha]
        values, timing = metric_samples(at, metric), pooled_samples(at)
        entry = {"sha": sha, "commit": sha[:7], "utc_time": at["utc_time"].min(), "n": len(values),
                 "values": values, "verdict": None, "change": np.nan, "p_value": np.nan}
        entry.update(_spread(values))
        if previous is not None and timing:
            result = compare_samples(previous, timing, thresholds)
            change = 1 / result.ratio - 1 if bigger else result.ratio - 1
            entry.update(verdict=result.verdict, change=change, p_value=result.p_value)
        previous = timing or previous
        out.append(entry)
    return pd.DataFrame(out, columns=["sha", "commit", "utc_time", "n", "values", "median", "q1", "q3", "min",
                                      "max", "verdict", "change", "p_value"])


def histories(bench: pd.DataFrame, metric: str = "tokens_per_s", *, thresholds: Thresholds = DEFAULT_THRESHOLDS,
              repo: Path | str | None = None, include_dirty: bool = False) -> list[tuple[ConfigKey, pd.DataFrame]]:
    """The history of every configuration measured at two or more commits, the configurations whose
    newest regression is most recent first (those never regressed last)."""
    rows = bench if include_dirty else bench[~bench["dirty"]]
    order = commit_order(rows, repo)
    found = [(key, history_frame(rows, key, metric, thresholds=thresholds, include_dirty=include_dirty,
                                 order=order)) for key in config_keys(rows)]
    return sorted(((key, h) for key, h in found if len(h) >= 2), key=lambda item: _regression_age(item[1]))


def _regression_age(history: pd.DataFrame) -> int:
    regressed = [i for i, verdict in enumerate(history["verdict"]) if verdict == "regressed"]
    return len(history) - 1 - regressed[-1] if regressed else len(history) + 1


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return dict.fromkeys(("median", "q1", "q3", "min", "max"), np.nan)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "min": float(np.min(values)),
            "max": float(np.max(values))}


def commits_table(frame: pd.DataFrame, repo: Path | str | None = None) -> pd.DataFrame:
    """One row per stored commit and machine, newest first: time, branch, dirty, record and parity counts."""
    stored = frame.dropna(subset=["sha"])
    if stored.empty:
        return pd.DataFrame(columns=["machine", "commit", "commit_time", "branch", "dirty", "bench_records",
                                     "parity_passed", "parity_records", "first_record"])
    times = git_commit_times(stored["sha"].unique(), repo)
    rows = []
    for (machine, sha), group in stored.groupby(["machine", "sha"]):
        parity = group[group["kind"] == "parity"]
        branch = group.get("provenance.git.branch", pd.Series(dtype=object)).dropna()
        rows.append({"machine": machine, "sha": sha, "commit": sha[:7],
                     "commit_time": pd.Timestamp(times[sha], unit="s", tz="UTC") if sha in times else pd.NaT,
                     "branch": ", ".join(sorted(set(branch))), "dirty": bool(group["dirty"].any()),
                     "bench_records": int((group["kind"] == "bench").sum()),
                     "parity_passed": int((parity["status"] == "passed").sum()), "parity_records": len(parity),
                     "first_record": group["utc_time"].min()})
    table = pd.DataFrame(rows)
    order = {sha: i for i, sha in enumerate(commit_order(stored, repo))}
    table["_order"] = table["sha"].map(order)
    table = table.sort_values(["machine", "_order"], ascending=[True, False])
    return table.drop(columns="_order").reset_index(drop=True)

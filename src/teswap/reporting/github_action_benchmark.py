"""github-action-benchmark input: `customBiggerIsBetter` and `customSmallerIsBetter` JSON lists of
{name, unit, value, range, extra}, one entry per ok cell of one machine at one commit.

Names leave out the commit and machine so that a dashboard lines up the same cell across commits;
feed one machine's results per dashboard (the functions refuse a mix of machines or commits).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from teswap.reporting.errors import ReportError
from teswap.reporting.frame import ConfigKey
from teswap.reporting.history import metric_samples
from teswap.reporting.tables import comparison_table

BIGGER_IS_BETTER = "customBiggerIsBetter"
SMALLER_IS_BETTER = "customSmallerIsBetter"
# (column of the flat bench frame, name suffix, unit, scale) of each smaller-is-better metric.
SMALLER_METRICS = (("stats.median_s", "time", "ms", 1e3),
                   ("metrics.energy_per_token_j", "energy per token", "mJ/token", 1e3),
                   ("metrics.peak_allocated_bytes", "peak memory", "GiB", 2 ** -30),
                   ("metrics.ttft_s", "TTFT", "ms", 1e3), ("metrics.tpot_s", "TPOT", "ms", 1e3))


def _name(row: pd.Series) -> str:
    """The configuration's label (decode cells with their new tokens and speed options), machine aside."""
    return ConfigKey.of(row).label().rsplit(" ", 1)[0]  # the device is the machine's, named in `extra`


def _checked(bench: pd.DataFrame) -> pd.DataFrame:
    if bench.empty:
        raise ReportError("no benchmark records to export for github-action-benchmark")
    if bench["machine"].nunique() > 1 or bench["sha"].nunique() > 1:
        raise ReportError("github-action-benchmark JSON takes one machine at one commit; select one "
                          f"(machines: {', '.join(sorted(set(bench['machine'])))})")
    newest = bench.sort_values("utc_time").drop_duplicates(
        subset=[c for c in bench.columns if c.startswith("cell.")], keep="last")
    return newest[newest["status"] == "ok"]


def _parity_note(bench: pd.DataFrame, parity: pd.DataFrame | None) -> dict[tuple, str]:
    table = comparison_table(bench, parity)
    return {(r.model, r.workload, r.seq_len, r.batch, r.backend, r.precision): r.parity for r in table.itertuples()}


def _extra(row: pd.Series, parity: dict[tuple, str]) -> str:
    key = tuple(row[f"cell.{f}"] for f in ("model", "workload", "seq_len", "batch", "backend", "precision"))
    verdict = "stock baseline" if row["cell.backend"] == "stock" else f"parity {parity.get(key, 'untested')}"
    samples = row["stats.samples_s"]
    count = len(samples) if isinstance(samples, list) else 0
    return f"commit {row['commit']} on {row['machine']}; {count} samples; {verdict}"


def gab_entries(bench: pd.DataFrame, parity: pd.DataFrame | None = None) -> dict[str, list[dict[str, Any]]]:
    """Both lists, keyed by github-action-benchmark's tool name, for one machine at one commit."""
    cells = _checked(bench).sort_values([f"cell.{f}" for f in ("model", "workload", "batch", "seq_len", "backend",
                                                                 "precision")])
    notes = _parity_note(bench, parity)
    bigger, smaller = [], []
    for _, row in cells.iterrows():
        rates = metric_samples(row.to_frame().T, "tokens_per_s")
        q1, q3 = np.percentile(rates, [25, 75]) if rates else (np.nan, np.nan)
        extra = _extra(row, notes)
        bigger.append({"name": f"{_name(row)} throughput", "unit": "tokens/s",
                       "value": round(float(row["metrics.tokens_per_s"]), 3),
                       "range": f"± {(q3 - q1) / 2:.1f}", "extra": extra})
        for column, label, unit, scale in SMALLER_METRICS:
            value = row.get(column)
            if value is not None and pd.notna(value):
                entry = {"name": f"{_name(row)} {label}", "unit": unit, "value": round(float(value) * scale, 6),
                         "extra": extra}
                if column == "stats.median_s" and pd.notna(row.get("stats.iqr_s")):
                    entry["range"] = f"± {float(row['stats.iqr_s']) * scale / 2:.4g}"
                smaller.append(entry)
    return {BIGGER_IS_BETTER: bigger, SMALLER_IS_BETTER: smaller}


def write_gab(bench: pd.DataFrame, parity: pd.DataFrame | None, directory: Path | str) -> list[Path]:
    """`customBiggerIsBetter.json` and `customSmallerIsBetter.json` under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for tool, entries in gab_entries(bench, parity).items():
        path = directory / f"{tool}.json"
        path.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths

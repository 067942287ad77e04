"""The published numbers: each swapped cell beside its stock baseline, with the parity verdict of
the same model, backend and precision at the same commit next to every performance figure.

Every speedup carries its 95% CI and says how it was measured (`speedup_basis`): "paired" when the
swapped cell was timed in interleaved rounds with stock (schema 2; the CI bootstraps the rounds),
"unpaired" when the two were separate cells (schema 1 records, `--sequential` sweeps, pytest-benchmark
imports; the CI bootstraps each cell's samples and does not cover drift between the cells).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from teswap.precision.table import baseline_precision
from teswap.reporting.frame import CELL_COLUMNS
from teswap.speed_options import stock_options
from teswap.statistics import independent_ratio
from teswap.store.ranks import aggregate_ranks
from teswap.store.records import DECODE_METRICS, DECODE_PHASES

# Parity verdicts, worst first: the verdict of a group of cases is its worst member's.
PARITY_ORDER = ("failed", "error", "passed", "skipped")
FLAGGED_PARITY = ("failed", "error")
UNTESTED = "untested"

TABLE_COLUMNS = [
    "machine", "commit", "model", "workload", "seq_len", "batch", "device", "new_tokens", "options", "backend",
    "precision", "status",
    "reason", "tokens_per_s", "stock_precision", "stock_tokens_per_s", "speedup", "speedup_ci_low",
    "speedup_ci_high", "speedup_basis", "paired_stock_tokens_per_s", "noise", "noise_reasons", "plan", "world_size",
    "peak_allocated_bytes", "stock_peak_allocated_bytes", "peak_memory_change", "energy_per_token_j",
    "stock_energy_per_token_j", "mfu_vs_precision_peak", "mfu_vs_bf16_peak", "parity", "parity_cases",
    "parity_model", "flagged",
]
_METRICS = {"metrics.tokens_per_s": "tokens_per_s", "metrics.peak_allocated_bytes": "peak_allocated_bytes",
            "metrics.energy_per_token_j": "energy_per_token_j", "metrics.mfu_vs_precision_peak":
            "mfu_vs_precision_peak", "metrics.mfu_vs_bf16_peak": "mfu_vs_bf16_peak",
            "paired.speedup": "paired_speedup", "paired.speedup_ci_low": "paired_ci_low",
            "paired.speedup_ci_high": "paired_ci_high", "paired.baseline_tokens_per_s": "paired_stock_tokens_per_s"}
_KEPT = {"stats.samples_s": "samples_s", "noise.noisy": "noisy", "noise.reasons": "noise_reasons",
         "distributed.plan": "plan", "rank.world_size": "world_size"} | {
    f"paired.phases.{phase}.baseline_samples": f"{phase.removesuffix('_s')}_stock_samples" for phase in DECODE_PHASES}
# Decode cells' figures (schema 3): inference metrics, and the paired TTFT / TPOT ratios with their CIs.
_DECODE = {f"metrics.{name}": name for name in DECODE_METRICS} | {
    f"paired.phases.{phase}.{part}": f"{phase.removesuffix('_s')}_{part}"
    for phase in DECODE_PHASES for part in ("ratio", "ci_low", "ci_high")}
STEADY, NOISY, UNCHECKED = "steady", "noisy", "unchecked"
_JOIN = ["machine", "sha", "model", "workload", "seq_len", "batch", "device", "new_tokens", "plan", "world_size"]


def latest_cells(bench: pd.DataFrame) -> pd.DataFrame:
    """The newest run's record of every cell per machine, commit and launch (plan and world size: one process
    and a tensor-parallel launch of the same cell are two rows), its ranks merged when it ran under torchrun,
    with short column names."""
    launches = [c for c in ("distributed.plan", "rank.world_size") if c in bench]  # a plan's cell is its own
    key = ["machine", "sha", *CELL_COLUMNS, *launches]
    ordered = _with_sha(bench).sort_values("utc_time")
    newest_run = ordered.groupby(key, dropna=False)["run_id"].last().rename("newest_run").reset_index()
    rows = ordered.merge(newest_run, on=key, how="left")
    rows = rows[rows["run_id"] == rows["newest_run"]].drop(columns="newest_run")
    if "rank.world_size" in rows and (rows["rank.world_size"].fillna(1) > 1).any():
        rows = merge_ranks(rows)
    for column, single in (("distributed.plan", None), ("rank.world_size", 1)):
        rows[column] = rows[column].fillna(single) if column in rows else single
    cells = rows.rename(columns={c: c.removeprefix("cell.") for c in CELL_COLUMNS} | _METRICS | _KEPT | _DECODE)
    keep = ["machine", "sha", "commit", *(c.removeprefix("cell.") for c in CELL_COLUMNS), "status", "reason",
            *_METRICS.values(), *_KEPT.values(), *_DECODE.values()]
    cells = cells.reindex(columns=keep).copy()
    for column in (*_METRICS.values(), *_DECODE.values()):
        cells[column] = pd.to_numeric(cells[column], errors="coerce")
        cells.loc[cells["status"] != "ok", column] = np.nan  # a cell that did not run has no numbers
    return cells.reset_index(drop=True)


def _with_sha(records: pd.DataFrame) -> pd.DataFrame:
    """Records measured outside git join one another under the sha "nogit" (NaN keys do not join)."""
    return records.assign(sha=records["sha"].astype(object).where(records["sha"].notna(), "nogit"))


def merge_ranks(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run and cell, merged by teswap.store.ranks.aggregate_ranks: all tokens over the slowest
    rank's time, the largest peak, energy summed; a run missing a rank becomes status "error". A launch
    whose ranks were synchronised keeps its paired speedup (its samples are the slowest rank's per step);
    an older one's per-rank rounds are not the launch's, so its speedup is the ratio of merged rates."""
    merged = []
    for _, group in rows.groupby(["machine", "sha", "run_id", *CELL_COLUMNS], dropna=False, sort=False):
        first = group.iloc[0].copy()
        if len(group) > 1 or (first.get("rank.world_size") or 1) > 1:
            try:
                (total,) = aggregate_ranks([_as_record(row) for _, row in group.iterrows()])
            except ValueError as err:
                first["status"], first["reason"] = "error", str(err)
            else:
                for name in ("tokens_per_s", "peak_allocated_bytes", "energy_per_token_j", "mfu_vs_precision_peak",
                             "mfu_vs_bf16_peak"):
                    first[f"metrics.{name}"] = total["metrics"][name]
                first["distributed.plan"] = total["plan"]
                if total["paired"] is not None and _present(first.get("paired.baseline_tokens_per_s")):
                    first["paired.baseline_tokens_per_s"] = total["paired"]["baseline_tokens_per_s"] * total["dp_size"]
                if total["paired"] is None:
                    for column in ("stats.samples_s", *(c for c in _METRICS if c.startswith("paired."))):
                        first[column] = None
        merged.append(first)
    return pd.DataFrame(merged)


def _as_record(row: pd.Series) -> dict:
    """The nested fields aggregate_ranks reads, back from a flat row."""
    def plain(value: Any) -> Any:
        return value if isinstance(value, list) or not pd.isna(value) else None

    metrics = {c.removeprefix("metrics."): plain(v) for c, v in row.items()
               if isinstance(c, str) and c.startswith("metrics.")}
    launch = {c.removeprefix("distributed."): plain(v) for c, v in row.items()
              if isinstance(c, str) and c.startswith("distributed.") and c.count(".") == 1}
    world = row.get("rank.world_size")
    rank = {} if pd.isna(world) else {"rank": int(row["rank.rank"]), "world_size": int(world)}
    stats = None if pd.isna(row.get("stats.median_s")) else {"median_s": row["stats.median_s"]}
    paired = ({"speedup": row.get("paired.speedup"), "baseline_tokens_per_s": row.get("paired.baseline_tokens_per_s")}
              if _present(row.get("paired.speedup")) else None)
    return {"kind": "bench", "status": row["status"], "run_id": row["run_id"], "rank": rank, "stats": stats,
            "cell": {c.removeprefix("cell."): row[c] for c in CELL_COLUMNS}, "metrics": metrics,
            "distributed": {k: v for k, v in launch.items() if v is not None} or None, "paired": paired}


def parity_verdicts(parity: pd.DataFrame) -> pd.DataFrame:
    """Per machine, commit, model, backend, precision and device type: the worst status, n passed / n, and the
    model the verdict was measured on (`parity_model`): the model itself, or where its own case could not run
    (teswap run plans one that fits), the smaller model whose case says it stands for it."""
    columns = ["machine", "sha", "model", "backend", "precision", "device", "sharding", "parity", "parity_cases",
               "parity_model"]
    if parity is None or parity.empty:
        return pd.DataFrame(columns=columns)
    cases = _with_sha(parity).rename(columns={f"case.{c}": c for c in ("model", "backend", "precision", "device")})
    none = pd.Series(None, index=cases.index, dtype=object)
    plans, worlds = (cases.get(c, none) for c in ("case.parallel", "case.world_size"))
    cases = cases.assign(device=cases["device"].map(_device_type), parity_model=cases["model"],
                         sharding=[sharding(p, w) for p, w in zip(plans, worlds, strict=True)])
    key = columns[:7]
    rows = _verdict_rows(cases, key)
    if "case.stands_for" in cases:
        own = {row[:7] for row in rows}
        standing = cases[cases["case.stands_for"].notna()]
        borrowed = _verdict_rows(standing.assign(model=standing["case.stands_for"]), key)
        rows += [row for row in borrowed if row[:7] not in own]  # a model's own verdict wins over a stand-in's
    return pd.DataFrame(rows, columns=columns)


def sharding(plan: Any, world_size: Any = None) -> str:
    """What a verdict must have been measured under to stand beside a speed of `plan` on `world_size` ranks: a
    whole model (one process or replicas: each rank holds all of it) or that sharded plan itself on as many
    ranks (fsdp, tp, fsdp+tp cut the weights by the world), never another: a swap checked whole says nothing
    of its tensor-parallel shards, nor one checked at tp 2 of its shards at tp 4."""
    if plan is None or pd.isna(plan) or plan == "replicas":
        return "whole"
    if world_size is None or pd.isna(world_size):
        return str(plan)
    return f"{plan} x{int(world_size)}"  # a float column where some records have no launch


def _verdict_rows(cases: pd.DataFrame, key: list[str]) -> list[tuple]:
    rows = []
    for values, group in cases.groupby(key, dropna=False):
        statuses = set(group["status"].astype(str))
        verdict = next((s for s in PARITY_ORDER if s in statuses), UNTESTED)
        models = ", ".join(sorted(set(group["parity_model"].astype(str))))
        rows.append((*values, verdict, f"{int((group['status'] == 'passed').sum())}/{len(group)}", models))
    return rows


def comparison_table(bench: pd.DataFrame, parity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per swapped cell: its figures, the stock baseline's, speedup with its CI and basis,
    memory change, noise, parity."""
    cells = latest_cells(bench)
    stock = cells[cells["backend"] == "stock"]
    swapped = cells[cells["backend"] != "stock"].copy()
    swapped["stock_precision"] = swapped["precision"].map(baseline_precision)
    swapped["stock_options"] = swapped["options"].map(stock_options)
    renamed = ("tokens_per_s", "peak_allocated_bytes", "energy_per_token_j", "samples_s", "noisy", "noise_reasons")
    baseline = stock.rename(columns={"precision": "stock_precision", "options": "stock_options"}
                            | {name: f"stock_{name}" for name in renamed})
    baseline = baseline[[*_JOIN, "stock_precision", "stock_options", *(f"stock_{name}" for name in renamed)]]
    table = swapped.merge(baseline, on=[*_JOIN, "stock_precision", "stock_options"], how="left")
    speedups = pd.DataFrame([_speedup(row) for _, row in table.iterrows()], index=table.index,
                            columns=["speedup", "speedup_ci_low", "speedup_ci_high", "speedup_basis"])
    table[speedups.columns] = speedups
    noise = pd.DataFrame([_noise(row) for _, row in table.iterrows()], index=table.index,
                         columns=["noise", "noise_reasons"])
    table = table.drop(columns="noise_reasons")
    table[noise.columns] = noise
    table["peak_memory_change"] = table["peak_allocated_bytes"] / table["stock_peak_allocated_bytes"] - 1
    verdicts = parity_verdicts(parity).rename(columns={"device": "device_type"})
    table["device_type"] = table["device"].map(_device_type)
    table["sharding"] = [sharding(p, w) for p, w in zip(table["plan"], table["world_size"], strict=True)]
    table = table.merge(verdicts, how="left",
                        on=["machine", "sha", "model", "backend", "precision", "device_type", "sharding"])
    table["parity"] = table["parity"].fillna(UNTESTED)
    table["parity_cases"] = table["parity_cases"].fillna("0/0")
    table["parity_model"] = table["parity_model"].fillna(table["model"])
    table["flagged"] = table["parity"].isin(FLAGGED_PARITY)
    table = table.sort_values(["machine", "model", "workload", "new_tokens", "batch", "seq_len", "backend",
                               "precision", "options"])
    return table[TABLE_COLUMNS].reset_index(drop=True)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _speedup(row: pd.Series) -> tuple[float, float, float, str | None]:
    """(speedup, CI low, CI high, basis): the paired record's own, else the two cells' ratio, unpaired."""
    if row["status"] != "ok":
        return np.nan, np.nan, np.nan, None
    if _present(row["paired_speedup"]):
        low, high = row["paired_ci_low"], row["paired_ci_high"]
        return (float(row["paired_speedup"]), float(low) if _present(low) else np.nan,
                float(high) if _present(high) else np.nan, "paired")
    if not (_present(row["tokens_per_s"]) and _present(row["stock_tokens_per_s"])):
        return np.nan, np.nan, np.nan, None
    speedup, low, high = row["tokens_per_s"] / row["stock_tokens_per_s"], np.nan, np.nan
    samples, stock_samples = row["samples_s"], row["stock_samples_s"]
    if isinstance(samples, list) and isinstance(stock_samples, list) and samples and stock_samples:
        interval = independent_ratio(stock_samples, samples)
        low = interval.ci_low if interval.ci_low is not None else np.nan
        high = interval.ci_high if interval.ci_high is not None else np.nan
    return float(speedup), low, high, "unpaired"


def _noise(row: pd.Series) -> tuple[str, str]:
    """(steady / noisy / unchecked, the reasons): a paired speedup rests on its own record; an unpaired
    one on both cells' records."""
    parts = [("", row["noisy"], row["noise_reasons"])]
    if row["speedup_basis"] == "unpaired":
        parts.append(("stock: ", row["stock_noisy"], row["stock_noise_reasons"]))
    checked = [(prefix, reasons) for prefix, noisy, reasons in parts if isinstance(noisy, bool | np.bool_)]
    if row["status"] != "ok" or not checked:
        return UNCHECKED, ""
    reasons = [prefix + reason for prefix, found in checked if isinstance(found, list) for reason in found]
    noisy = any(bool(noisy) for _, noisy, _ in parts if isinstance(noisy, bool | np.bool_))
    return (NOISY if noisy else STEADY), "; ".join(reasons)


def _version_text(version: object) -> str:
    return str(int(version)) if isinstance(version, float) and version.is_integer() else str(version)


def _device_type(device: object) -> str:
    """"cuda:0" and "cuda" are one device type; parity cases and bench cells may spell it either way."""
    return str(device).split(":", 1)[0]


# Per-case figures of the published parity table: column -> the flat record column it comes from.
PARITY_FIGURES = {
    "swapped_rel_rms": "metrics.swapped.rel_rms", "stock_rel_rms": "metrics.stock.rel_rms",
    "swapped_robust_rel": "metrics.swapped.robust_rel", "stock_robust_rel": "metrics.stock.robust_rel",
    "swapped_sqnr_db": "metrics.swapped.sqnr_db", "stock_sqnr_db": "metrics.stock.sqnr_db",
    "swapped_kl_div": "metrics.swapped.kl_div", "stock_kl_div": "metrics.stock.kl_div",
    "swapped_top1": "metrics.swapped.top1_agreement", "stock_top1": "metrics.stock.top1_agreement",
    "reference_perplexity": "perplexity.reference", "stock_perplexity": "perplexity.stock",
    "swapped_perplexity": "perplexity.swapped", "swapped_greedy_tokens": "generation.swapped_matched_tokens",
    "stock_greedy_tokens": "generation.stock_matched_tokens", "greedy_new_tokens": "generation.new_tokens",
    "greedy_prompts": "generation.prompts",
}
PARITY_TABLE_COLUMNS = ["machine", "commit", "model", "backend", "precision", "seq_len", "batch", "device",
                        "fuse_qkv", "seed", "parallel", "world_size", "policy", "status", "precision_verdict",
                        *PARITY_FIGURES, "first_divergent_layer", "inputs", "reason"]


def parity_table(parity: pd.DataFrame) -> pd.DataFrame:
    """One row per parity case (newest per case and commit): model x backend x precision x shape, both
    models' errors to the reference, perplexity, greedy match, the swap verdict and the precision verdict."""
    if parity is None or parity.empty:
        return pd.DataFrame(columns=PARITY_TABLE_COLUMNS)
    case_columns = [c for c in parity.columns if c.startswith("case.")]
    newest = parity.sort_values("utc_time").drop_duplicates(subset=["machine", "sha", *case_columns], keep="last")
    table = newest.rename(columns={c: c.removeprefix("case.") for c in case_columns})
    table["policy"] = [MISSING_POLICY if pd.isna(name) else f"{name} v{_version_text(version)}"
                       for name, version in zip(table["policy.name"], table["policy.version"], strict=True)]
    for column, source in PARITY_FIGURES.items():
        table[column] = pd.to_numeric(table[source], errors="coerce") if source in table else np.nan
    for column in ("precision_verdict", "inputs", "parallel", "world_size"):  # parallel: a sharded check's plan
        if column not in table:
            table[column] = None
    table = table.sort_values(["machine", "model", "backend", "precision", "seq_len", "batch"])
    return table.reindex(columns=PARITY_TABLE_COLUMNS).reset_index(drop=True)


MISSING_POLICY = "—"

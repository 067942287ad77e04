"""The decode view: every decode cell's inference metrics, stock beside swapped.

One row per decode cell (the newest run of each, per machine and commit): TTFT, TPOT, ITL p50/p90/p99,
decode and end-to-end tokens/s and energy per output token. A swapped row adds its TTFT and TPOT
ratios to its stock baseline (stock time / swapped time, from the same paired rounds, with the 95%
CI issue 14's rounds give every timed phase), stock's own TTFT and TPOT medians in those rounds
(`stock_ttft_s`, `stock_tpot_s`: what the ratios compare against; the stock rows are stock's own
cells, timed alone, at another moment), its end-to-end speedup with its CI and basis (as in the
comparison table), noise and parity; and every row its end-to-end throughput over plain stock
(`vs_hf`: the HF model without speed options, same shape and model dtype; a ratio of two cells'
medians, unpaired), which reads the ladder HF -> TE -> +graphs -> +FP8 weights down one shape's rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from teswap.precision.table import baseline_precision
from teswap.reporting.tables import comparison_table, latest_cells
from teswap.speed_options import option_names

SHAPE = ["machine", "sha", "model", "seq_len", "new_tokens", "batch", "device"]
CELL = [*SHAPE, "backend", "precision", "options"]
FROM_COMPARISON = ["speedup", "speedup_ci_low", "speedup_ci_high", "speedup_basis", "noise", "noise_reasons", "parity",
                   "parity_model", "flagged"]
DECODE_COLUMNS = [
    "machine", "commit", "model", "seq_len", "new_tokens", "batch", "device", "backend", "precision", "options",
    "status", "reason", "ttft_s", "tpot_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "decode_tokens_per_s",
    "e2e_tokens_per_s", "energy_per_output_token_j", "ttft_ratio", "ttft_ci_low", "ttft_ci_high", "tpot_ratio",
    "tpot_ci_low", "tpot_ci_high", "stock_ttft_s", "stock_tpot_s", *FROM_COMPARISON, "vs_hf",
]
BACKEND_ORDER = {"stock": 0, "torch": 1, "te": 2}


def empty_decode_table() -> pd.DataFrame:
    """A decode table with no rows (a store without decode cells)."""
    return pd.DataFrame(columns=DECODE_COLUMNS)


def decode_table(bench: pd.DataFrame, parity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per decode cell (module docstring), ordered by shape, then stock, torch, te and options."""
    decode_rows = bench[bench["cell.workload"] == "decode"]
    if decode_rows.empty:
        return empty_decode_table()
    cells = latest_cells(decode_rows).rename(columns={"noise_reasons": "own_noise_reasons"})
    comparison = comparison_table(decode_rows, parity)
    key = [*(c for c in CELL if c != "sha"), "plan", "world_size"]
    table = cells.merge(comparison.rename(columns={"commit": "_commit"})[[*key, *FROM_COMPARISON]], on=key,
                        how="left")
    stock = table["backend"] == "stock"
    table.loc[stock, "noise"] = [_own_noise(row) for _, row in table[stock].iterrows()]
    table.loc[stock, "noise_reasons"] = ["; ".join(r) if isinstance(r, list) else ""
                                         for r in table[stock]["own_noise_reasons"]]
    table.loc[stock, "parity"] = "stock"
    table["flagged"] = table["flagged"].fillna(False).astype(bool)
    for phase in ("ttft", "tpot"):
        table[f"stock_{phase}_s"] = [_median_of_rounds(rounds) for rounds in table[f"{phase}_stock_samples"]]
    table["vs_hf"] = _vs_hf(table)
    order = table["backend"].map(BACKEND_ORDER).fillna(9) * 100 + table["options"].map(lambda o: len(option_names(o)))
    table = table.assign(_order=order).sort_values(["machine", "model", "new_tokens", "batch", "seq_len", "_order",
                                                     "precision"])
    return table.reindex(columns=DECODE_COLUMNS).reset_index(drop=True)


def _median_of_rounds(rounds: object) -> float:
    """The median of a paired phase's baseline samples (a list per round); NaN when not paired."""
    values = [value for block in rounds for value in block] if isinstance(rounds, list) else []
    return float(np.median(values)) if values else np.nan


def _own_noise(row: pd.Series) -> str:
    if row["status"] != "ok" or not isinstance(row["noisy"], bool | np.bool_):
        return "unchecked"
    return "noisy" if row["noisy"] else "steady"


def _vs_hf(table: pd.DataFrame) -> pd.Series:
    """Each row's end-to-end tokens/s over plain stock's (no options, the row's model dtype), same shape."""
    plain = table[(table["backend"] == "stock") & (table["options"] == "")]
    reference = plain.set_index([*SHAPE, "precision"])["e2e_tokens_per_s"]
    keys = [(*(row[c] for c in SHAPE), baseline_precision(row["precision"])) for _, row in table.iterrows()]
    hf = pd.Series([reference.get(key, np.nan) for key in keys], index=table.index, dtype=float)
    return table["e2e_tokens_per_s"] / hf


def decode_groups(table: pd.DataFrame) -> list[tuple[str, int]]:
    """The (model, new_tokens) pairs of a decode table, one set of decode charts each."""
    return sorted({(str(m), int(n)) for m, n in zip(table["model"], table["new_tokens"], strict=True)})

"""The table `teswap bench` prints at the end: tokens/s, speedup and memory vs stock, J/token."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from teswap.precision.table import baseline_precision

COLUMNS = ("model", "workload", "seq", "batch", "backend", "precision", "status", "tokens/s", "vs stock",
           "peak MiB", "mem vs stock", "J/token")


def _baseline_key(cell: dict[str, Any]) -> tuple:
    """Which stock cell a row compares against: same model, workload, shape, device and model dtype."""
    return (cell["model"], cell["workload"], cell["seq_len"], cell["batch"], cell["device"],
            baseline_precision(cell["precision"]))


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.3f}x"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary_rows(records: Iterable[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per record (ordered as given), comparing each with its stock baseline when there is one."""
    records = list(records)
    stock = {_baseline_key(r["cell"]): r["metrics"] for r in records
             if r["cell"]["backend"] == "stock" and r["status"] == "ok"}
    rows: list[tuple[str, ...]] = []
    for record in records:
        cell, metrics = record["cell"], record["metrics"]
        base = stock.get(_baseline_key(cell), {})
        tokens, peak = metrics.get("tokens_per_s"), metrics.get("peak_allocated_bytes")
        rows.append((
            cell["model"], cell["workload"], str(cell["seq_len"]), str(cell["batch"]), cell["backend"],
            cell["precision"], record["status"], _number(tokens, ",.0f"),
            _ratio(tokens, base.get("tokens_per_s")) if cell["backend"] != "stock" else "",
            _number(None if peak is None else peak / 2**20, ",.1f"),
            _ratio(peak, base.get("peak_allocated_bytes")) if cell["backend"] != "stock" else "",
            _number(metrics.get("energy_per_token_j"), ".3e"),
        ))
    return rows


def format_table(rows: list[tuple[str, ...]], columns: tuple[str, ...] = COLUMNS) -> str:
    """Plain-text table, numbers right-aligned."""
    widths = [max(len(columns[i]), *(len(row[i]) for row in rows)) if rows else len(columns[i])
              for i in range(len(columns))]
    left = {0, 1, 4, 5, 6}  # text columns

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths,
                                                                                                  strict=True)))

    return "\n".join([line(columns), line(tuple("-" * w for w in widths)), *(line(row) for row in rows)])


def summary_table(records: Iterable[dict[str, Any]]) -> str:
    return format_table(summary_rows(records))

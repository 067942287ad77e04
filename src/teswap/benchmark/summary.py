"""The tables `teswap bench` prints at the end: tokens/s, speedup with its CI and memory vs stock,
J/token, the noise verdict; for decode cells TTFT, TPOT, ITL percentiles and decode tokens/s, each
time with its paired ratio to stock; and the lines under them that say how the speedups were measured."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from teswap.precision.table import baseline_precision
from teswap.speed_options import options_label, stock_options
from teswap.statistics import independent_ratio

COLUMNS = ("model", "workload", "seq", "batch", "backend", "precision", "status", "tokens/s", "vs stock",
           "noise", "peak MiB", "mem vs stock", "J/token")
UNPAIRED_MARK = "u"


def _baseline_key(cell: dict[str, Any]) -> tuple:
    """Which stock cell a row compares against: same model, workload, shape, device, model dtype and the
    speed options stock can run."""
    return (cell["model"], cell["workload"], cell["seq_len"], cell["batch"], cell["device"],
            baseline_precision(cell["precision"]), cell.get("new_tokens", 0), stock_options(cell.get("options", "")))


def _seq(cell: dict[str, Any]) -> str:
    """The sequence length, or for decode the prompt + new tokens (e.g. 128+16)."""
    return f"{cell['seq_len']}+{cell['new_tokens']}" if cell["workload"] == "decode" else str(cell["seq_len"])


def _backend(cell: dict[str, Any]) -> str:
    return cell["backend"] + options_label(cell.get("options", ""))


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.3f}x"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"


def speedup_text(record: dict[str, Any], stock: dict[str, Any] | None) -> str:
    """`1.012x [0.990, 1.031]` from the paired rounds; from two separate cells, marked u; - without stock."""
    paired = record.get("paired")
    if record["status"] != "ok":
        return "-"
    if paired:
        return f"{paired['speedup']:.3f}x" + _interval(paired["speedup_ci_low"], paired["speedup_ci_high"])
    if stock is None or not stock["metrics"].get("tokens_per_s") or not record["metrics"].get("tokens_per_s"):
        return "-"
    text = _ratio(record["metrics"]["tokens_per_s"], stock["metrics"]["tokens_per_s"])
    samples, stock_samples = (r["stats"]["samples_s"] if r.get("stats") else [] for r in (record, stock))
    if samples and stock_samples:
        interval = independent_ratio(stock_samples, samples)
        text += _interval(interval.ci_low, interval.ci_high)
    return f"{text} {UNPAIRED_MARK}"


def _noise(record: dict[str, Any]) -> str:
    noise = record.get("noise")
    return "" if not noise else ("noisy" if noise["noisy"] else "steady")


def summary_rows(records: Iterable[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per record (ordered as given), comparing each with its stock baseline when there is one."""
    records = list(records)
    stock = {_baseline_key(r["cell"]): r for r in records if r["cell"]["backend"] == "stock" and r["status"] == "ok"}
    rows: list[tuple[str, ...]] = []
    for record in records:
        cell, metrics = record["cell"], record["metrics"]
        base = stock.get(_baseline_key(cell))
        tokens, peak = metrics.get("tokens_per_s"), metrics.get("peak_allocated_bytes")
        swapped = cell["backend"] != "stock"
        rows.append((
            cell["model"], cell["workload"], _seq(cell), str(cell["batch"]), _backend(cell),
            cell["precision"], record["status"], _number(tokens, ",.0f"),
            speedup_text(record, base) if swapped else "", _noise(record),
            _number(None if peak is None else peak / 2**20, ",.1f"),
            _ratio(peak, (base or {}).get("metrics", {}).get("peak_allocated_bytes")) if swapped else "",
            _number(metrics.get("energy_per_token_j"), ".3e"),
        ))
    return rows


def format_table(rows: list[tuple[str, ...]], columns: tuple[str, ...] = COLUMNS,
                 left: set[int] | frozenset[int] = frozenset({0, 1, 4, 5, 6, 9})) -> str:
    """Plain-text table, numbers right-aligned (`left`: the text columns)."""
    widths = [max(len(columns[i]), *(len(row[i]) for row in rows)) if rows else len(columns[i])
              for i in range(len(columns))]

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths,
                                                                                                  strict=True)))

    return "\n".join([line(columns), line(tuple("-" * w for w in widths)), *(line(row) for row in rows)])


def summary_table(records: Iterable[dict[str, Any]]) -> str:
    return format_table(summary_rows(records))


DECODE_COLUMNS = ("model", "seq", "batch", "backend", "precision", "status", "TTFT ms", "TTFT vs stock", "TPOT ms",
                  "TPOT vs stock", "ITL p50/p99 ms", "decode tok/s", "J/out token")


def _ms(value: float | None) -> str:
    return _number(None if value is None else value * 1e3, ".3g")


def _phase_ratio(record: dict[str, Any], name: str) -> str:
    """A paired phase's stock time / swapped time with its CI, e.g. `1.250x [1.21, 1.30]`; '' otherwise."""
    phase = ((record.get("paired") or {}).get("phases") or {}).get(name)
    return "" if not phase else f"{phase['ratio']:.3f}x" + _interval(phase["ci_low"], phase["ci_high"])


def decode_rows(records: Iterable[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per decode record: its TTFT, TPOT (each with its paired ratio to stock), ITL and throughput."""
    rows: list[tuple[str, ...]] = []
    for record in records:
        cell, metrics = record["cell"], record["metrics"]
        if cell["workload"] != "decode":
            continue
        itl = "-" if metrics.get("itl_p50_s") is None else f"{_ms(metrics['itl_p50_s'])}/{_ms(metrics['itl_p99_s'])}"
        rows.append((cell["model"], _seq(cell), str(cell["batch"]), _backend(cell), cell["precision"], record["status"],
                     _ms(metrics.get("ttft_s")), _phase_ratio(record, "ttft_s"), _ms(metrics.get("tpot_s")),
                     _phase_ratio(record, "tpot_s"), itl, _number(metrics.get("decode_tokens_per_s"), ",.0f"),
                     _number(metrics.get("energy_per_output_token_j"), ".3e")))
    return rows


def decode_table(records: Iterable[dict[str, Any]]) -> str:
    """The decode cells' inference metrics ('' when there are none)."""
    rows = decode_rows(records)
    return format_table(rows, DECODE_COLUMNS, left={0, 3, 4, 5}) if rows else ""


def summary_legend(records: Iterable[dict[str, Any]]) -> str:
    """How the speedups above were measured, and why each noisy cell is noisy."""
    records = list(records)
    rounds = sorted({r["paired"]["rounds"] for r in records if r.get("paired")})
    lines = ["vs stock: stock step time / swapped step time with its 95% CI"]
    if any(r["cell"]["workload"] == "decode" for r in records):
        lines[0] += " (decode: a step is one generation; TTFT and TPOT ratios are paired the same way)"
    if rounds:
        lines[0] += (f"; paired: timed in interleaved rounds with stock ({rounds[0]}-{rounds[-1]} rounds), median of "
                     "the per-round ratios, CI a bootstrap over rounds")
    if any(r.get("status") == "ok" and r["cell"]["backend"] != "stock" and not r.get("paired") for r in records):
        lines.append(f"  {UNPAIRED_MARK}: separate cells (not paired); their CI does not cover drift between them")
    noisy = [r for r in records if (r.get("noise") or {}).get("noisy")]
    for record in noisy:
        cell = record["cell"]
        lines.append(f"  noisy: {cell['model']} {cell['workload']} {_backend(cell)}/{cell['precision']} "
                     f"s={_seq(cell)} b={cell['batch']}: {'; '.join(record['noise']['reasons'])}")
    return "\n".join(lines)

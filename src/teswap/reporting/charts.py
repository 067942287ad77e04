"""Charts of one machine's results at one commit, and of one configuration over commits.

Figures are built on matplotlib.figure.Figure directly (no pyplot, no global backend or rcParams
change), sized to stay legible at a README's width: 7.5 x 4.2 in, written at 150 dpi as PNG and SVG.
Colour says the precision, line style and marker the backend; stock is black and dashed; a red ring
marks a figure whose parity run failed, a dashed orange ring a noisy cell, a red ▼ a commit that
regressed, a green ▲ one that improved. Speedups carry their 95% CI as error bars, on an axis that
always holds 1.0 and every interval (and spans at least 0.1×).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pandas as pd
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from teswap.reporting.errors import ReportError
from teswap.reporting.frame import ConfigKey
from teswap.reporting.history import HISTORY_METRICS

SIZE_IN = (7.5, 4.2)
DPI = 150
FONT = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5}
PRECISION_COLORS = {"fp32": "#7f7f7f", "bf16": "#1f77b4", "fp16": "#17becf", "fp8-delayed": "#ff7f0e",
                    "fp8-current": "#9467bd", "fp8-block": "#8c564b", "mxfp8": "#e377c2"}
BACKEND_STYLE = {"te": ("-", "o"), "torch": (":", "s"), "stock": ("--", "^")}
FLAG_COLOR, IMPROVED_COLOR = "#d62728", "#2ca02c"
_Chart = TypeVar("_Chart", bound=Callable[..., Figure])


def _styled(chart: _Chart) -> _Chart:
    """Build the figure under FONT; rc_context restores the caller's rcParams on exit."""
    @functools.wraps(chart)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        with rc_context(FONT):
            return chart(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(SIZE_IN[0], SIZE_IN[1]), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _one_machine(table: pd.DataFrame, model: str, workload: str) -> pd.DataFrame:
    part = table[(table["model"] == model) & (table["workload"] == workload)]
    if part.empty:
        raise ReportError(f"no results for model {model!r}, workload {workload!r}")
    if part["machine"].nunique() > 1 or part["commit"].nunique() > 1:
        raise ReportError("a chart shows one machine at one commit; filter the table first (select / --machine)")
    return part


def _subtitle(part: pd.DataFrame) -> str:
    return f"{part['machine'].iloc[0]} @ {part['commit'].iloc[0]}"


def _seq_axis(ax: Axes, seq_lens: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(seq_lens))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
    ax.set_xlabel("sequence length (tokens)")


def _series(part: pd.DataFrame, value: str, stock_value: str | None) -> Iterator[tuple[str, str, str, pd.DataFrame]]:
    """(label, backend, precision, rows sorted by seq_len) for each line; the stock lines first."""
    several_batches = part["batch"].nunique() > 1
    suffix = (lambda b: f" (batch {b})") if several_batches else (lambda b: "")
    if stock_value:
        stock = part.drop_duplicates(["stock_precision", "batch", "seq_len"])
        for (precision, batch), rows in stock.groupby(["stock_precision", "batch"]):
            rows = rows.drop(columns=[value]).rename(columns={stock_value: value}).sort_values("seq_len")
            yield f"stock {precision}{suffix(batch)}", "stock", precision, rows.assign(flagged=False)
    for (backend, precision, batch), rows in part.groupby(["backend", "precision", "batch"]):
        yield f"{backend} {precision}{suffix(batch)}", backend, precision, rows.sort_values("seq_len")


def _plot_lines(ax: Axes, part: pd.DataFrame, value: str, stock_value: str | None, scale: float = 1.0) -> None:
    flagged_drawn = False
    for label, backend, precision, rows in _series(part, value, stock_value):
        rows = rows.dropna(subset=[value])
        if rows.empty:
            continue
        style, marker = BACKEND_STYLE.get(backend, ("-.", "D"))
        color = "black" if backend == "stock" else PRECISION_COLORS.get(precision, "#bcbd22")
        ax.plot(rows["seq_len"], rows[value] * scale, linestyle=style, marker=marker, color=color, label=label,
                linewidth=1.8, markersize=5)
        bad = rows[rows["flagged"]]
        if not bad.empty:
            ax.scatter(bad["seq_len"], bad[value] * scale, s=150, facecolors="none", edgecolors=FLAG_COLOR,
                       linewidths=2, zorder=5, label=None if flagged_drawn else "parity failed")
            flagged_drawn = True
    _seq_axis(ax, list(part["seq_len"]))


def _legend(ax: Axes) -> None:
    """The legend with "parity failed" last, where a reader looks for the caveat."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "parity failed")
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="best")


@_styled
def throughput_chart(table: pd.DataFrame, model: str, workload: str) -> Figure:
    """Tokens/s against sequence length, one line per backend and precision, stock included."""
    part = _one_machine(table, model, workload)
    fig, (ax,) = _figure()
    _plot_lines(ax, part, "tokens_per_s", "stock_tokens_per_s")
    ax.set_ylabel("tokens/s")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title(f"{model} {workload}: throughput ({_subtitle(part)})")
    _legend(ax)
    return fig


MIN_SPEEDUP_SPAN = 0.1  # the speedup axis spans at least 0.1x, so noise around 1.0 does not look like a trend
NOISY_COLOR = "#ff7f0e"


def _speedup_limits(part: pd.DataFrame) -> tuple[float, float]:
    """y-limits that hold 1.0, every speedup and every CI bound, at least MIN_SPEEDUP_SPAN wide, padded."""
    values = pd.concat([part["speedup"], part["speedup_ci_low"], part["speedup_ci_high"], pd.Series([1.0])])
    values = pd.to_numeric(values, errors="coerce").dropna()
    low, high = float(values.min()), float(values.max())
    if high - low < MIN_SPEEDUP_SPAN:
        middle = (low + high) / 2
        low, high = middle - MIN_SPEEDUP_SPAN / 2, middle + MIN_SPEEDUP_SPAN / 2
    pad = 0.08 * (high - low)
    return low - pad, high + pad


def _error_bars(ax: Axes, part: pd.DataFrame) -> None:
    """Each speedup's 95% CI as an error bar in its line's colour; noisy cells ringed."""
    noisy_drawn = False
    for _, _, precision, rows in _series(part, "speedup", None):
        rows = rows.dropna(subset=["speedup"])
        bounded = rows.dropna(subset=["speedup_ci_low", "speedup_ci_high"])
        color = PRECISION_COLORS.get(precision, "#bcbd22")
        if not bounded.empty:
            below = (bounded["speedup"] - bounded["speedup_ci_low"]).clip(lower=0)
            above = (bounded["speedup_ci_high"] - bounded["speedup"]).clip(lower=0)
            ax.errorbar(bounded["seq_len"], bounded["speedup"], yerr=[below, above], fmt="none", ecolor=color,
                        elinewidth=1.4, capsize=4, zorder=4)
        noisy = rows[rows["noise"] == "noisy"]
        if not noisy.empty:
            ax.scatter(noisy["seq_len"], noisy["speedup"], s=110, facecolors="none", edgecolors=NOISY_COLOR,
                       linewidths=1.6, linestyle="--", zorder=5, label=None if noisy_drawn else "noisy cell")
            noisy_drawn = True


@_styled
def speedup_chart(table: pd.DataFrame, model: str, workload: str) -> Figure:
    """Swapped tokens/s over stock tokens/s (at the baseline precision) against sequence length, each
    point with its 95% CI as an error bar; the y-axis always holds 1.0 and every interval."""
    part = _one_machine(table, model, workload)
    fig, (ax,) = _figure()
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="stock (1.0×)")
    _plot_lines(ax, part, "speedup", None)
    _error_bars(ax, part)
    ax.set_ylim(*_speedup_limits(part))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}×"))
    basis = set(part["speedup_basis"].dropna())
    how = "paired rounds" if basis == {"paired"} else "separate cells" if basis == {"unpaired"} else "mixed"
    ax.set_ylabel(f"speedup over stock (×), 95% CI ({how})")
    ax.set_title(f"{model} {workload}: speedup ({_subtitle(part)})")
    _legend(ax)
    return fig


@_styled
def memory_energy_chart(table: pd.DataFrame, model: str, workload: str) -> Figure:
    """Peak allocated memory (GiB) and energy per token (mJ) against sequence length."""
    part = _one_machine(table, model, workload)
    fig, (memory, energy) = _figure(ncols=2)
    gib = part["peak_allocated_bytes"].max(skipna=True) >= 2**30  # a tiny CPU model peaks at a few MiB
    _plot_lines(memory, part, "peak_allocated_bytes", "stock_peak_allocated_bytes", scale=2 ** (-30 if gib else -20))
    memory.set_ylabel(f"peak allocated memory ({'GiB' if gib else 'MiB'})")
    _plot_lines(energy, part, "energy_per_token_j", "stock_energy_per_token_j", scale=1e3)
    energy.set_ylabel("energy per token (mJ)")
    if part["energy_per_token_j"].isna().all():  # say why the panel is empty instead of leaving it blank
        energy.text(0.5, 0.5, "not measured:\nno NVML energy counter\n(CPU run, or NVML absent)",
                    ha="center", va="center", transform=energy.transAxes, color="dimgray")
    fig.suptitle(f"{model} {workload}: memory and energy ({_subtitle(part)})", fontsize=FONT["axes.titlesize"])
    _legend(memory)
    return fig


@_styled
def history_chart(history: pd.DataFrame, key: ConfigKey, metric: str = "tokens_per_s") -> Figure:
    """The metric's samples at each commit (box: quartiles, whiskers: min-max) with regressions marked."""
    if history.empty:
        raise ReportError(f"no history for {key.label()}")
    fig, (ax,) = _figure()
    positions = list(range(len(history)))
    values = [v if v else [float("nan")] for v in history["values"]]
    boxes = ax.boxplot(values, positions=positions, whis=(0, 100), widths=0.5, patch_artist=True,
                       medianprops={"color": "#08306b"})
    ax.plot(positions, history["median"], color="#1f77b4", linewidth=1, alpha=0.7)
    for x, box, (_, row) in zip(positions, boxes["boxes"], history.iterrows(), strict=True):
        color = {"regressed": FLAG_COLOR, "improved": IMPROVED_COLOR}.get(row["verdict"])
        box.set(facecolor="#fcbba1" if color == FLAG_COLOR else "#c7e9c0" if color else "#c6dbef",
                edgecolor=color or "#1f77b4")
        if color:
            mark = "▼" if row["verdict"] == "regressed" else "▲"
            ax.annotate(f"{mark} {row['change']:+.1%}", (x, row["max"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=9, fontweight="bold", color=color)
    ax.set_xticks(positions, list(history["commit"]), rotation=30 if len(positions) > 6 else 0)
    ax.set_xlabel("commit, oldest → newest (box: quartiles of the samples; whiskers: min to max)")
    ax.set_ylabel(HISTORY_METRICS[metric][1])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"))
    ax.margins(y=0.15)
    ax.set_title(f"{key.label()}\n{key.machine}", fontsize=FONT["axes.titlesize"])
    return fig


def chart_groups(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model, workload) pairs of `table`, one set of charts each. Decode cells have their own charts
    (decode_charts.py): these would draw every speed option and number of new tokens of a shape as one line."""
    rows = table[table["workload"] != "decode"]
    return sorted(set(zip(rows["model"], rows["workload"], strict=True)))


def save_figure(fig: Figure, directory: Path | str, stem: str) -> list[Path]:
    """Write `fig` as `<stem>.png` (150 dpi) and `<stem>.svg` under `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    # Byte-identical output for identical records: no timestamps, fixed SVG element ids. A re-render of
    # a committed report then changes nothing in git.
    fig.savefig(paths[0], dpi=DPI, metadata={"Software": None})
    with rc_context({"svg.hashsalt": stem}):
        fig.savefig(paths[1], metadata={"Date": None})
    return paths

"""Charts of the decode table (decode.py), one set per model and number of new tokens.

    latency   TTFT and TPOT (ms) against prompt length, stock beside each swapped variant
    speedup   TTFT and TPOT ratios to stock (stock time / swapped time) against prompt length, each with
              its paired 95% CI as an error bar, on an axis that always holds 1.0
    throughput  decode tokens/s against batch

Styles follow charts.py: colour says the precision (stock black), line style and marker the backend;
a variant with speed options is drawn with hollow markers and its options in the label. Several
batches (latency, speedup) or prompt lengths (throughput) become one line each.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from teswap.reporting.charts import BACKEND_STYLE, PRECISION_COLORS, SIZE_IN, _figure, _styled
from teswap.reporting.errors import ReportError
from teswap.speed_options import options_label


def _part(table: pd.DataFrame, model: str, new_tokens: int) -> pd.DataFrame:
    part = table[(table["model"] == model) & (table["new_tokens"] == new_tokens)]
    if part.empty:
        raise ReportError(f"no decode results for model {model!r} with {new_tokens} new tokens")
    if part["machine"].nunique() > 1 or part["commit"].nunique() > 1:
        raise ReportError("a chart shows one machine at one commit; filter the table first (select / --machine)")
    return part


def _variant_style(backend: str, precision: str, options: str) -> dict:
    style, marker = BACKEND_STYLE.get(backend, ("-.", "D"))
    color = "black" if backend == "stock" else PRECISION_COLORS.get(precision, "#bcbd22")
    return {"linestyle": style, "marker": marker, "color": color, "linewidth": 1.8, "markersize": 5,
            "markerfacecolor": "none" if options else color}


def _shades(part: pd.DataFrame, split: str) -> dict[int, float]:
    """Line opacity per value of `split`: the largest value darkest, so one colour keeps one variant."""
    values = sorted({int(v) for v in part[split]})
    return {v: 1.0 if len(values) == 1 else 0.3 + 0.7 * i / (len(values) - 1) for i, v in enumerate(values)}


def _lines(part: pd.DataFrame, x: str, split: str,
           swapped_only: bool = False) -> Iterator[tuple[str, dict, pd.DataFrame]]:
    """(variant label, plot style, rows sorted by x) per variant and value of `split` (its shade)."""
    shades = _shades(part, split)
    for (backend, precision, options, value), rows in part.groupby(["backend", "precision", "options", split]):
        if swapped_only and backend == "stock":
            continue
        style = _variant_style(str(backend), str(precision), str(options)) | {"alpha": shades[int(value)]}
        yield f"{backend} {precision}{options_label(str(options))}", style, rows.sort_values(x)


def _legend(fig: Figure, part: pd.DataFrame, split: str, swapped_only: bool = False) -> None:
    """One legend below the axes: each variant once, then the shade of each value of `split`."""
    handles: dict[str, Line2D] = {}
    for (backend, precision, options), _ in part.groupby(["backend", "precision", "options"]):
        if not (swapped_only and backend == "stock"):
            label = f"{backend} {precision}{options_label(str(options))}"
            handles[label] = Line2D([], [], **_variant_style(str(backend), str(precision), str(options)))
    shades = _shades(part, split)
    if len(shades) > 1:
        word = {"batch": "batch", "seq_len": "prompt"}[split]
        handles |= {f"{word} {value}": Line2D([], [], color="dimgray", alpha=alpha, linewidth=3)
                    for value, alpha in shades.items()}
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3, fontsize=8)


def _log2_axis(ax: Axes, values: list[int], label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
    ax.set_xlabel(label)


def _title(fig: Figure, part: pd.DataFrame, model: str, new_tokens: int, what: str) -> None:
    fig.suptitle(f"{model} decode, {new_tokens} new tokens: {what}\n{part['machine'].iloc[0]} @ "
                 f"{part['commit'].iloc[0]}", fontsize=10)


def _tall_figure(part: pd.DataFrame, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    """A chart with room under the axes for a legend of every variant and shade."""
    fig, axes = _figure(ncols=ncols)
    entries = part.groupby(["backend", "precision", "options"]).ngroups + max(part["batch"].nunique(),
                                                                              part["seq_len"].nunique())
    fig.set_size_inches(SIZE_IN[0], SIZE_IN[1] + 0.22 * -(-entries // 3))
    return fig, axes


@_styled
def decode_latency_chart(table: pd.DataFrame, model: str, new_tokens: int) -> Figure:
    """TTFT and TPOT (ms) against prompt length, one line per variant, stock included."""
    part = _part(table, model, new_tokens)
    fig, axes = _tall_figure(part, ncols=2)
    for ax, column, name in zip(axes, ("ttft_s", "tpot_s"), ("TTFT", "TPOT"), strict=True):
        for _, style, rows in _lines(part.dropna(subset=[column]), "seq_len", "batch"):
            ax.plot(rows["seq_len"], rows[column] * 1e3, **style)
        _log2_axis(ax, list(part["seq_len"]), "prompt length (tokens)")
        ax.set_ylabel(f"{name} (ms)")
    _legend(fig, part, "batch")
    _title(fig, part, model, new_tokens, "time to first token and per output token")
    return fig


@_styled
def decode_speedup_chart(table: pd.DataFrame, model: str, new_tokens: int) -> Figure:
    """TTFT and TPOT speedups over stock (stock time / swapped time) with their paired 95% CIs."""
    part = _part(table, model, new_tokens)
    fig, axes = _tall_figure(part, ncols=2)
    for ax, name in zip(axes, ("ttft", "tpot"), strict=True):
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        values = [1.0]
        for _, style, rows in _lines(part.dropna(subset=[f"{name}_ratio"]), "seq_len", "batch", True):
            ratio, low, high = rows[f"{name}_ratio"], rows[f"{name}_ci_low"], rows[f"{name}_ci_high"]
            ax.plot(rows["seq_len"], ratio, **style)
            bounded = low.notna() & high.notna()
            ax.errorbar(rows["seq_len"][bounded], ratio[bounded], yerr=[(ratio - low)[bounded].clip(lower=0),
                                                                       (high - ratio)[bounded].clip(lower=0)],
                        fmt="none", ecolor=style["color"], alpha=style["alpha"], elinewidth=1.4, capsize=4)
            values += [*ratio, *low.dropna(), *high.dropna()]
        span = max(max(values) - min(values), 0.1)
        ax.set_ylim(min(values) - 0.08 * span, max(values) + 0.08 * span)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}×"))
        _log2_axis(ax, list(part["seq_len"]), "prompt length (tokens)")
        ax.set_ylabel(f"{name.upper()}: stock time / swapped (95% CI)")
    _legend(fig, part, "batch", swapped_only=True)
    _title(fig, part, model, new_tokens, "TTFT and TPOT speedups over stock (dashed: 1.0×)")
    return fig


@_styled
def decode_throughput_chart(table: pd.DataFrame, model: str, new_tokens: int) -> Figure:
    """Decode tokens/s (batch x (new - 1) / decode time) against batch, one line per variant."""
    part = _part(table, model, new_tokens)
    fig, (ax,) = _tall_figure(part)
    for _, style, rows in _lines(part.dropna(subset=["decode_tokens_per_s"]), "batch", "seq_len"):
        ax.plot(rows["batch"], rows["decode_tokens_per_s"], **style)
    _log2_axis(ax, list(part["batch"]), "batch")
    ax.set_ylabel("decode tokens/s")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _legend(fig, part, "seq_len")
    _title(fig, part, model, new_tokens, "decode throughput")
    return fig

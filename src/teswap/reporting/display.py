"""What the published tables show and how their numbers read: DataFrames to display `Table`s."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from teswap.reporting.formats import FLAG, Cell, Table
from teswap.speed_options import options_label

MISSING = "—"
FLAG_LEGEND = (f"{FLAG} parity failed (or errored) for this model, backend and precision at this commit: "
               "the figure is not a valid result of the swapped model. ")
UNPAIRED = "ᵘ"
RESULTS_LEGEND = ("Speedup is stock step time / swapped step time, against stock at the baseline precision (bf16 for "
                  "FP8), with its 95% CI in brackets. It was timed in interleaved rounds with stock (ABBA blocks; the "
                  "median of the per-round ratios, the CI a bootstrap over rounds; stock tok/s comes from the same "
                  f"rounds) unless marked {UNPAIRED}: then the two were separate cells, and the CI (each cell's "
                  "samples bootstrapped) does not cover drift between them. noise: the noise guard's verdict; a noisy "
                  "cell was measured again and stayed unsteady (CV: the robust spread of a model's step times; drift: "
                  "its median from the first to the last third of its samples; round speedups CV: the spread of the "
                  "per-round ratios; GPU clocks, slowdown reasons, temperature); — : not checked (before schema 2). "
                  "Δ mem is against the same stock cell; MFU is against the GPU's peak at the cell's precision.")
DECODE_ROWS_LEGEND = (" Decode rows: seq is prompt+new tokens, tok/s counts output tokens end to end, a step is one "
                      "generation and MFU is at the decode tokens/s (TTFT, TPOT and more in the decode table).")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def number(value: Any, pattern: str, scale: float = 1.0) -> str:
    """`value * scale` formatted with `pattern` (e.g. "{:,.0f}"), or — when missing."""
    return MISSING if _missing(value) else pattern.format(float(value) * scale)


def memory(value: Any) -> str:
    """Bytes as GiB, or MiB below 1 GiB (a tiny CPU model's peak is a few MiB, not "0.0 GiB")."""
    if _missing(value):
        return MISSING
    value = float(value)
    return f"{value * 2 ** -30:.1f} GiB" if value >= 2**30 else f"{value * 2 ** -20:.1f} MiB"


def _status_text(row: pd.Series) -> str | None:
    return None if row["status"] == "ok" else str(row["status"]).upper()


def speedup_text(row: pd.Series) -> str:
    """e.g. `1.34× [1.31, 1.37]`, with ᵘ when the speedup is unpaired; — when there is none."""
    if _missing(row["speedup"]):
        return MISSING
    low, high = row["speedup_ci_low"], row["speedup_ci_high"]
    bounded = not (_missing(low) or _missing(high))
    digits = 3 if bounded and float(high) - float(low) < 0.02 else 2  # a tight interval keeps its width visible
    text = f"{float(row['speedup']):.{digits}f}×"
    if bounded:
        text += f" [{float(low):.{digits}f}, {float(high):.{digits}f}]"
    return text + (f" {UNPAIRED}" if row["speedup_basis"] == "unpaired" else "")


def _noise_text(row: pd.Series) -> str:
    if row["noise"] == "noisy":
        return f"noisy: {row['noise_reasons']}" if row["noise_reasons"] else "noisy"
    return MISSING if row["noise"] == "unchecked" else str(row["noise"])


def _stock_tokens(row: pd.Series) -> str:
    paired = row["paired_stock_tokens_per_s"]
    value = row["stock_tokens_per_s"] if _missing(paired) else paired
    return number(value, "{:,.0f}") + f" ({row['stock_precision']})"


def _seq_text(row: pd.Series) -> str:
    """The sequence length, or for a decode cell its prompt + new tokens (e.g. 512+128)."""
    new = row.get("new_tokens", 0)
    return f"{row['seq_len']}+{int(new)}" if row["workload"] == "decode" else str(row["seq_len"])


def _backend_text(row: pd.Series) -> str:
    options = row.get("options")
    text = str(row["backend"]) + ("" if _missing(options) else options_label(str(options)))
    world = row.get("world_size")
    return text if _missing(world) or int(world) <= 1 else f"{text} ({row.get('plan') or 'replicas'} ×{int(world)})"


def results_table(table: pd.DataFrame) -> Table:
    """The published table: one row per swapped cell (see tables.comparison_table)."""
    headers = ["model", "workload", "seq", "batch", "backend", "precision", "stock tok/s", "tok/s", "speedup",
               "noise", "peak mem", "Δ mem", "mJ/token", "MFU", "parity"]
    rows = []
    for _, row in table.iterrows():
        flag = bool(row["flagged"])
        status = _status_text(row)
        mark = f"{FLAG} " if flag else ""
        parity_text = {"failed": "FAILED", "error": "ERROR"}.get(row["parity"], row["parity"])
        rows.append([
            Cell(str(row["model"])), Cell(str(row["workload"])), Cell(_seq_text(row), numeric=True),
            Cell(str(row["batch"]), numeric=True), Cell(_backend_text(row)), Cell(str(row["precision"])),
            Cell(_stock_tokens(row), numeric=True),
            Cell(status or mark + number(row["tokens_per_s"], "{:,.0f}"), flag=flag, numeric=True),
            Cell(status or mark + speedup_text(row), flag=flag, numeric=True),
            Cell(_noise_text(row)),
            Cell(memory(row["peak_allocated_bytes"]), numeric=True),
            Cell(number(row["peak_memory_change"], "{:+.1%}"), numeric=True),
            Cell(number(row["energy_per_token_j"], "{:.3g}", 1e3), numeric=True),
            Cell(number(row["mfu_vs_precision_peak"], "{:.1%}"), numeric=True),
            Cell(_parity_text(row, mark, parity_text), flag=flag),
        ])
    flagged = any(row[7].flag for row in rows)
    decode = DECODE_ROWS_LEGEND if len(table) and (table["workload"] == "decode").any() else ""
    borrowed = BORROWED_LEGEND if len(table) and (_borrowed(table)).any() else ""
    return Table(headers=headers, rows=rows,
                 legend=(FLAG_LEGEND if flagged else "") + RESULTS_LEGEND + decode + borrowed)


BORROWED_LEGEND = (" parity (on M): the verdict of model M's case, checked in this model's place because its own "
                   "case did not fit the machine (teswap run); it is not this model's own verdict.")


def _borrowed(table: pd.DataFrame) -> pd.Series:
    return table["parity_model"].notna() & (table["parity_model"].astype(str) != table["model"].astype(str))


def _parity_text(row: pd.Series, mark: str, verdict: str) -> str:
    """e.g. `passed 1/1`, or for a verdict measured on a stand-in `passed 1/1 (on llama3.2-1b)`."""
    if row["parity"] == "untested":
        return "untested"
    return f"{mark}{verdict} {row['parity_cases']}{_on(row)}"


def _on(row: pd.Series) -> str:
    """` (on M)` when the verdict was measured on a stand-in model M, else nothing."""
    model = row.get("parity_model")
    return "" if _missing(model) or str(model) == str(row["model"]) else f" (on {model})"


PARITY_LEGEND = ("Each cell is swapped / stock, both against the same high-precision reference run of stock on "
                 "the same weights and inputs. Swap: is the swapped model the same model as stock at this precision "
                 "(bounds relative to stock, judged by a paired bootstrap)? Precision: does stock itself meet the "
                 "precision's absolute bounds on this model (lossy: it does not, so neither can a swap)? Greedy: "
                 "tokens of the reference's greedy continuation matched before the first difference.")


def _pair(row: pd.Series, name: str, pattern: str) -> str:
    return f"{number(row[f'swapped_{name}'], pattern)} / {number(row[f'stock_{name}'], pattern)}"


def parity_cases_table(parity: pd.DataFrame) -> Table:
    """Parity cases (see tables.parity_table): errors of swapped / stock, perplexity, greedy match, both verdicts."""
    headers = ["model", "backend", "precision", "seq", "batch", "rel RMS err", "robust rel err", "SQNR dB", "KL",
               "top-1", "perplexity (ref)", "greedy tokens", "swap", "precision", "first divergent layer", "policy",
               "reason"]
    rows = []
    for _, row in parity.iterrows():
        failed = row["status"] in ("failed", "error")
        layer = row["first_divergent_layer"]
        greedy = MISSING if _missing(row["greedy_new_tokens"]) else \
            f"{_pair(row, 'greedy_tokens', '{:.1f}')} of {int(row['greedy_new_tokens'])}"
        ppl = MISSING if _missing(row["swapped_perplexity"]) else \
            f"{_pair(row, 'perplexity', '{:.2f}')} ({number(row['reference_perplexity'], '{:.2f}')})"
        world = row.get("world_size")
        backend = str(row["backend"]) + ("" if _missing(world) else f" ({row['parallel']} ×{int(world)})")
        rows.append([Cell(str(row["model"])), Cell(backend), Cell(str(row["precision"])),
                     Cell(str(row["seq_len"]), numeric=True), Cell(str(row["batch"]), numeric=True),
                     Cell(_pair(row, "rel_rms", "{:.2e}"), numeric=True),
                     Cell(_pair(row, "robust_rel", "{:.2e}"), numeric=True),
                     Cell(_pair(row, "sqnr_db", "{:.1f}"), numeric=True),
                     Cell(_pair(row, "kl_div", "{:.1e}"), numeric=True),
                     Cell(_pair(row, "top1", "{:.3f}"), numeric=True), Cell(ppl, numeric=True),
                     Cell(greedy, numeric=True),
                     Cell((f"{FLAG} " if failed else "") + str(row["status"]), flag=failed),
                     Cell(MISSING if _missing(row["precision_verdict"]) else str(row["precision_verdict"])),
                     Cell(MISSING if _missing(layer) else str(int(layer)), numeric=True),
                     Cell(str(row["policy"])), Cell("" if _missing(row["reason"]) else str(row["reason"]))])
    return Table(headers=headers, rows=rows, kind="parity", legend=PARITY_LEGEND)


def comparison_display(compare: pd.DataFrame) -> Table:
    """`teswap compare`'s table: medians at base and head (step time, or the paired speedup over stock),
    throughput change, p-value, verdict."""
    keys = [c for c in ("machine", "model", "workload", "seq_len", "batch", "backend", "precision", "device")
            if c in compare]
    headers = [*("seq" if k == "seq_len" else k for k in keys), "basis", "base median", "head median",
               "throughput Δ", "p", "n base/head", "verdict"]
    rows = []
    for _, row in compare.iterrows():
        bad = row["verdict"] in ("regressed", "broken in head")
        paired = row.get("basis") == "paired speedup"
        base, head = (number(row[f"{side}_speedup"], "{:.3f}×") if paired else
                      number(row[f"{side}_median_s"], "{:.4g} s") for side in ("base", "head"))
        rows.append([*(Cell(str(row[k]), numeric=k in ("seq_len", "batch")) for k in keys),
                     Cell(str(row.get("basis", "step time"))),
                     Cell(base, numeric=True), Cell(head, numeric=True),
                     Cell(number(row["throughput_change"], "{:+.1%}"), numeric=True),
                     Cell(number(row["p_value"], "{:.2g}"), numeric=True),
                     Cell(f"{row['base_n']}/{row['head_n']}", numeric=True),
                     Cell(_verdict_text(row), flag=bad)])
    legend = ("basis: \"paired speedup\" compares the per-round speedups over stock of cells timed in interleaved "
              "rounds (n counts rounds; throughput Δ is relative to stock); \"step time\" compares the raw step "
              "times (n counts samples).")
    return Table(headers=headers, rows=rows, kind="comparison", legend=legend)


def _verdict_text(row: pd.Series) -> str:
    if row["verdict"] == "broken in head":
        return f"{FLAG} broken in head ({row['head_status']})"
    return (f"{FLAG} " if row["verdict"] == "regressed" else "") + str(row["verdict"])


def commits_display(commits: pd.DataFrame) -> Table:
    """The per-commit history table (see history.commits_table)."""
    headers = ["commit", "commit time (UTC)", "branch", "dirty", "bench records", "parity passed", "first record"]
    rows = [[Cell(str(row["commit"])), Cell(_time(row["commit_time"])), Cell(str(row["branch"])),
             Cell("yes" if row["dirty"] else "no"), Cell(str(row["bench_records"]), numeric=True),
             Cell(f"{row['parity_passed']}/{row['parity_records']}", numeric=True,
                  flag=row["parity_passed"] < row["parity_records"]),
             Cell(_time(row["first_record"]))] for _, row in commits.iterrows()]
    return Table(headers=headers, rows=rows, kind="commits")


def _time(value: Any) -> str:
    return MISSING if _missing(value) or value is pd.NaT else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")


DECODE_LEGEND = ("One row per decode cell: a prompt of `prompt` tokens, then exactly `new` greedy tokens over the KV "
                 "cache (no early stop). TTFT: time to the first token (the prefill); TPOT: (end to end - TTFT) / "
                 "(new - 1); both medians over the timed generations. ITL: every gap between consecutive tokens "
                 "after the first, pooled, at p50/p90/p99. decode tok/s = batch x (new - 1) / decode time; e2e tok/s "
                 "= batch x new / end-to-end time. TTFT, TPOT and e2e ratios are stock time / swapped time from the "
                 "same interleaved rounds, with the 95% CI (bootstrap over rounds); the baseline is stock with the "
                 "options stock can run (cuda-graphs), and its TTFT / TPOT medians in those rounds stand beside "
                 "them. A stock row is stock's own cell, timed alone at another moment: on a machine whose load "
                 f"changes, compare the ratios, not figures across rows. vs HF {UNPAIRED}: e2e tok/s over the plain "
                 "stock cell (no options, the row's model dtype), two cells' medians (unpaired): the ladder HF -> "
                 "TE -> +graphs -> +FP8 weights. "
                 "J/token: NVML energy of whole generations (prefill included) per output token.")


def _ratio_text(row: pd.Series, name: str) -> str:
    ratio, low, high = row[f"{name}_ratio"], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if _missing(ratio):
        return MISSING
    bounded = not (_missing(low) or _missing(high))
    return f"{float(ratio):.2f}×" + (f" [{float(low):.2f}, {float(high):.2f}]" if bounded else "")


def milliseconds(value: Any) -> str:
    """Seconds as ms with three significant digits and no exponent (2.3, 78.2, 157, 2,480), or —."""
    if _missing(value):
        return MISSING
    ms = float(value) * 1e3
    return f"{ms:,.0f}" if abs(ms) >= 100 else f"{ms:.3g}"


def _paired_stock_text(row: pd.Series) -> str:
    """Stock's TTFT / TPOT medians (ms) in a swapped row's paired rounds, e.g. `160 / 74.4`."""
    if _missing(row["stock_ttft_s"]) and _missing(row["stock_tpot_s"]):
        return MISSING
    return f"{milliseconds(row['stock_ttft_s'])} / {milliseconds(row['stock_tpot_s'])}"


def _vs_hf_text(row: pd.Series) -> str:
    """e2e tok/s over plain stock's, marked unpaired except on plain stock's own row (1.00×)."""
    if _missing(row["vs_hf"]):
        return MISSING
    plain_stock = row["backend"] == "stock" and not row["options"]
    return f"{float(row['vs_hf']):.2f}×" + ("" if plain_stock else f" {UNPAIRED}")


def _decode_figures(row: pd.Series) -> list[str]:
    """A decode row's figures in the table's order; a stock row has no ratios to itself."""
    swapped = row["backend"] != "stock"
    itl = "/".join(milliseconds(row[f"itl_p{q}_s"]) for q in (50, 90, 99))
    return [milliseconds(row["ttft_s"]), _ratio_text(row, "ttft") if swapped else "",
            milliseconds(row["tpot_s"]), _ratio_text(row, "tpot") if swapped else "",
            _paired_stock_text(row) if swapped else "", itl,
            number(row["decode_tokens_per_s"], "{:,.0f}"), number(row["e2e_tokens_per_s"], "{:,.0f}"),
            speedup_text(row) if swapped else "", _vs_hf_text(row), number(row["energy_per_output_token_j"], "{:.3g}")]


def decode_results_table(table: pd.DataFrame) -> Table:
    """The published decode table (see decode.decode_table): stock rows first in each shape; a cell that did
    not run shows its status and why (a GPU-only speed option on a CPU, TE's FP8 rows rule)."""
    headers = ["model", "prompt", "new", "batch", "variant", "TTFT ms", "TTFT vs stock", "TPOT ms", "TPOT vs stock",
               "stock TTFT / TPOT ms, same rounds", "ITL p50/p90/p99 ms", "decode tok/s", "e2e tok/s", "e2e vs stock",
               "vs HF", "J/token", "noise", "parity", "reason"]
    rows = []
    for _, row in table.iterrows():
        flag, status = bool(row["flagged"]), _status_text(row)
        mark = f"{FLAG} " if flag else ""
        figures = [mark + text if text and text != MISSING else text for text in _decode_figures(row)]
        if status:
            figures = [status, *[MISSING] * (len(figures) - 1)]
        rows.append([Cell(str(row["model"])), Cell(str(row["seq_len"]), numeric=True),
                     Cell(str(row["new_tokens"]), numeric=True), Cell(str(row["batch"]), numeric=True),
                     Cell(f"{_backend_text(row)} {row['precision']}"),
                     *(Cell(text, flag=flag, numeric=True) for text in figures), Cell(_noise_text(row)),
                     Cell(MISSING if _missing(row["parity"]) else str(row["parity"]) + _on(row), flag=flag),
                     Cell("" if status is None or _missing(row["reason"]) else str(row["reason"]))])
    return Table(headers=headers, rows=rows, legend=DECODE_LEGEND, kind="decode")

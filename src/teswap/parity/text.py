"""A parity report as text: the whole table `teswap check` prints, and the one-line row of `teswap run`."""

from __future__ import annotations

import math

from teswap.parity.case import ParityReport


def number(value: float, pattern: str = "{:.4g}") -> str:
    """`value` formatted with `pattern`; inf and nan spelled out."""
    return pattern.format(value) if math.isfinite(value) else str(value)


def verdict_word(report: ParityReport) -> str:
    return "PASS" if report.passed else "FAIL"


def report_text(report: ParityReport) -> str:
    """The readable parity table: metric, swapped, stock, limit, pass/fail; then diagnostics."""
    case = report.case
    lines = [f"teswap check: model={case.source_name} backend={case.backend} precision={case.precision} "
             f"seq_len={case.seq_len} batch={case.batch} device={case.device} reference={report.reference_dtype} "
             f"policy={report.verdict.policy}",
             f"{'bound':28} {'swapped':>12} {'stock':>12} {'limit':>12}  ok"]
    for row in report.verdict.rows:
        stock = "" if row.stock_value is None else number(row.stock_value)
        lines.append(f"{row.bound:28} {number(row.value):>12} {stock:>12} {number(row.limit):>12}  "
                     f"{'pass' if row.passed else 'FAIL'}")
    for bound in report.verdict.skipped:
        lines.append(f"{bound:28} {'-':>12} {'-':>12} {'-':>12}  skipped (metric not measured)")
    layers = " ".join(f"{i}:{s:.2e}/{k:.2e}" for i, (s, k) in
                      enumerate(zip(report.swapped_layer_errors, report.stock_layer_errors, strict=True)))
    lines.append(f"per-layer hidden-state error vs reference (swapped/stock): {layers}")
    lines.append(f"first diverging layer: {_layer(report)}")
    if report.worst_grad:
        lines.append(f"worst gradient: {report.worst_grad}")
    lines.append(f"verdict: {verdict_word(report)}" + ("" if report.passed else f" ({report.failure_summary()})"))
    return "\n".join(lines)


def summary_header() -> str:
    """The column heads of `summary_row`."""
    return (f"  {'backend':8} {'precision':12} {'verdict':8} {'rel err swapped/stock':>22} {'SQNR dB':>8} "
            f"{'KL':>9} {'top-1':>6} {'grad err':>9}  first diverging layer")


def summary_row(report: ParityReport) -> str:
    """One line per case: verdict, robust error of swapped and stock, SQNR, KL, top-1, gradient error."""
    s, k = report.swapped, report.stock
    return (f"  {report.case.backend:8} {report.case.precision:12} {verdict_word(report):8} "
            f"{s['robust_rel']:>10.2e} /{k['robust_rel']:>10.2e} {number(s['sqnr_db'], '{:.1f}'):>8} "
            f"{s['kl_div']:>9.1e} {s['top1_agreement']:>6.3f} {s.get('grad_rel_norm_error', math.nan):>9.2e}  "
            f"{_layer(report)}")


def _layer(report: ParityReport) -> str:
    return "none" if report.first_divergent_layer is None else str(report.first_divergent_layer)

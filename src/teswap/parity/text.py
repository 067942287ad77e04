"""A parity report as text: the whole table `teswap check` prints, and the one-line row of `teswap run`."""

from __future__ import annotations

import math

from teswap.parity.case import ParityReport
from teswap.parity.rule import BoundCheck


def number(value: float | None, pattern: str = "{:.4g}") -> str:
    """`value` formatted with `pattern`; inf and nan spelled out, None as "-"."""
    if value is None:
        return "-"
    return pattern.format(value) if math.isfinite(value) else str(value)


def verdict_word(report: ParityReport) -> str:
    return "PASS" if report.passed else "FAIL"


def _ratio(row: BoundCheck) -> str:
    if row.ratio is None:
        return "-"
    interval = f" [{row.ratio_ci[0]:.2f}, {row.ratio_ci[1]:.2f}]" if row.ratio_ci else ""
    return f"{row.ratio:.2f}{interval}"


def report_text(report: ParityReport) -> str:
    """The readable parity report: the swap verdict's rows, the precision verdict's, then diagnostics."""
    case = report.case
    lines = [f"teswap check: model={case.source_name} backend={case.backend} precision={case.precision} "
             f"seq_len={case.seq_len} batch={case.batch} batches={case.batches} device={case.device} "
             f"reference={report.reference_dtype} policy={report.verdict.policy}",
             f"inputs: {report.inputs}",
             "swap verdict: is the swapped model the same model as stock at this precision? "
             "(ratio = swapped/stock shortfall, 95% interval from a paired block bootstrap)",
             f"  {'bound':30} {'swapped':>11} {'stock':>11} {'ratio [95% CI]':>20}  rule",
             *(_swap_row(row) for row in report.verdict.rows),
             "precision verdict: does this precision keep the model fit? (absolute bounds, stock and swapped)",
             f"  {'bound':30} {'swapped':>11} {'stock':>11} {'limit':>11}  stock",
             *(_precision_row(row) for row in report.verdict.precision_rows),
             *(f"  {bound:30} skipped (metric not measured)" for bound in report.verdict.skipped)]
    lines += _diagnostics(report)
    if report.routing:  # an MoE model: routing beside the usual metrics
        r = report.routing
        lines.append(f"routing ({r['experts']} experts, swapped vs stock at this precision): agreement "
                     f"{r['agreement']:.2%} ({r['flips']} flips of {r['tokens']} token-layers over {r['layers']} MoE "
                     f"layers), aux loss stock {r['aux_loss_stock']:.6f} swapped {r['aux_loss_swapped']:.6f}, "
                     f"load balance {r['load_balance']:.2f}")
    lines.append(f"precision verdict: {report.precision_verdict.upper()}"
                 + ("" if report.verdict.precision_passed else " (stock fails "
                    + ", ".join(row.bound for row in report.verdict.precision_failures)
                    + " too: the precision is lossy on this model, not the swap)"))
    lines.append(f"swap verdict: {verdict_word(report)}" + ("" if report.passed else f" ({report.failure_summary()})"))
    return "\n".join(lines)


def _swap_row(row: BoundCheck) -> str:
    status = "pass" if row.passed else f"FAIL ({row.failure})"
    return (f"  {row.bound:30} {number(row.value):>11} {number(row.stock_value):>11} {_ratio(row):>20}  "
            f"{row.rule}  {status}")


def _precision_row(row: BoundCheck) -> str:
    stock = "-" if row.stock_passed is None else ("pass" if row.stock_passed else "fails")
    return f"  {row.bound:30} {number(row.value):>11} {number(row.stock_value):>11} {number(row.limit):>11}  {stock}"


def _diagnostics(report: ParityReport) -> list[str]:
    layers = " ".join(f"{i}:{s:.2e}/{k:.2e}" for i, (s, k) in
                      enumerate(zip(report.swapped_layer_errors, report.stock_layer_errors, strict=True)))
    lines = [f"per-layer hidden-state error vs reference (swapped/stock): {layers}",
             f"first diverging layer: {_layer(report)}"]
    if report.perplexity:
        ppl = report.perplexity
        lines.append(f"perplexity: reference {ppl['reference']:.3f}, stock {ppl['stock']:.3f}, "
                     f"swapped {ppl['swapped']:.3f}")
    if report.generation:
        gen = report.generation
        lines.append(f"greedy decoding, {gen['prompts']:.0f} prompts x {gen['new_tokens']:.0f} tokens: matched prefix "
                     f"of the reference's continuation: stock {gen['stock_matched_tokens']:.1f}, "
                     f"swapped {gen['swapped_matched_tokens']:.1f} tokens")
    if report.worst_grad:
        lines.append(f"worst single gradient (diagnosis): {report.worst_grad}")
    return lines


def summary_header() -> str:
    """The column heads of `summary_row`."""
    return (f"  {'backend':8} {'precision':12} {'swap':6} {'precision':9} {'rel err swapped/stock':>22} "
            f"{'SQNR dB':>8} {'KL':>9} {'top-1':>6} {'ppl':>8} {'greedy':>9}  first diverging layer")


def summary_row(report: ParityReport) -> str:
    """One line per case: both verdicts, errors of swapped and stock, SQNR, KL, top-1, perplexity, greedy match."""
    s, k = report.swapped, report.stock
    gen = report.generation
    greedy = f"{gen['swapped_matched_tokens']:.1f}/{gen['stock_matched_tokens']:.1f}" if gen else "-"
    ppl = f"{report.perplexity['swapped']:.2f}" if report.perplexity else "-"
    return (f"  {report.case.backend:8} {report.case.precision:12} {verdict_word(report):6} "
            f"{report.precision_verdict:9} {s['rel_rms']:>10.2e} /{k['rel_rms']:>10.2e} "
            f"{number(s['sqnr_db'], '{:.1f}'):>8} {s['kl_div']:>9.1e} {s['top1_agreement']:>6.3f} {ppl:>8} "
            f"{greedy:>9}  {_layer(report)}")


def _layer(report: ParityReport) -> str:
    return "none" if report.first_divergent_layer is None else str(report.first_divergent_layer)

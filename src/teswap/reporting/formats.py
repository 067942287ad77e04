"""Render a table of display cells as Markdown, HTML, LaTeX or aligned plain text.

A table is headers plus rows of `Cell`s; a flagged cell (a performance figure whose parity run
failed) is emphasised in every format: bold in Markdown, a red cell in HTML, bold with a dagger
in LaTeX. The display text already carries a ⚠ so the flag survives even in plain text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

FLAG = "⚠"


@dataclass(frozen=True)
class Cell:
    """One displayed value; `flag` marks a figure that must not be quoted as valid."""

    text: str
    flag: bool = False
    numeric: bool = False


@dataclass(frozen=True, kw_only=True)
class Table:
    """Headers, rows of cells, an optional legend line printed under the table, and its kind (the
    HTML class: results, parity, comparison, commits)."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    legend: str = ""
    kind: str = "results"


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table; flagged cells in bold."""
    def cell(c: Cell) -> str:
        text = c.text.replace("|", "\\|")
        return f"**{text}**" if c.flag else text

    lines = ["| " + " | ".join(table.headers) + " |",
             "|" + "|".join("---:" if _numeric_column(table, i) else "---" for i in range(len(table.headers))) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table.rows]
    if table.legend:
        lines += ["", table.legend]
    return "\n".join(lines) + "\n"


def _numeric_column(table: Table, index: int) -> bool:
    return any(row[index].numeric for row in table.rows)


def to_html(table: Table) -> str:
    """An HTML <table> of class `table.kind` (no page around it); flagged cells get class "flag"."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = []
    for row in table.rows:
        cells = []
        for c in row:
            classes = " ".join(name for name, on in (("flag", c.flag), ("num", c.numeric)) if on)
            attribute = f' class="{classes}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(c.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = f'<p class="legend">{html.escape(table.legend)}</p>' if table.legend else ""
    return (f'<table class="{table.kind}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table>\n" + legend)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"×": r"$\times$", "—": "--", "Δ": r"$\Delta$", "−": "-", "≥": r"$\geq$", "ᵘ": r"$^{u}$",
                  "±": r"$\pm$", "°": r"$^{\circ}$"}


def latex_escape(text: str) -> str:
    """`text` safe inside a LaTeX table cell (special characters escaped, × and Δ as math)."""
    escaped = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, latex in _LATEX_SYMBOLS.items():
        escaped = escaped.replace(symbol, latex)
    return escaped


def to_latex(table: Table, caption: str = "") -> str:
    """A booktabs tabular; flagged cells in bold with a dagger (the legend explains it)."""
    def cell(c: Cell) -> str:
        text = latex_escape(c.text.replace(FLAG, "").strip())
        return rf"\textbf{{{text}}}$^\dagger$" if c.flag else text

    spec = "".join("r" if _numeric_column(table, i) else "l" for i in range(len(table.headers)))
    lines = [r"\begin{table}[ht]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption or table.legend:
        legend = latex_escape(table.legend).replace(FLAG, r"$^\dagger$")
        lines.append(rf"\caption{{{' '.join(part for part in (latex_escape(caption), legend) if part)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_text(table: Table) -> str:
    """Columns aligned with spaces, numbers right-aligned, for a terminal."""
    widths = [max(len(h), *(len(row[i].text) for row in table.rows)) if table.rows else len(h)
              for i, h in enumerate(table.headers)]
    def line(texts: Sequence[str], numeric: Sequence[bool]) -> str:
        cells = (t.rjust(w) if n else t.ljust(w) for t, w, n in zip(texts, widths, numeric, strict=True))
        return "  ".join(cells).rstrip()

    numeric = [_numeric_column(table, i) for i in range(len(table.headers))]
    out = [line(table.headers, numeric), line(["-" * w for w in widths], numeric)]
    out += [line([c.text for c in row], numeric) for row in table.rows]
    if table.legend:
        out += ["", table.legend]
    return "\n".join(out).rstrip() + "\n"

"""The static HTML report: index.html with the tables, charts, per-commit history and provenance,
beside its chart files and the tables as CSV, Markdown and LaTeX. Relative links only and no
script, so it opens from the file system with no server."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path

import pandas as pd

from teswap.reporting import display, formats
from teswap.reporting.frame import select
from teswap.reporting.history import HISTORY_METRICS, commits_table
from teswap.reporting.publish import Section, sections, write_charts, write_history_charts, write_tables
from teswap.reporting.regression import DEFAULT_THRESHOLDS, Thresholds
from teswap.reporting.tables import parity_table

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       max-width: 1280px; margin: 0 auto; padding: 1.5rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 13.5px; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.55rem; white-space: nowrap; }
th { background: #f0f3f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
td.flag { background: #fde0dc; color: #a50f15; font-weight: 700; }
.legend { font-size: 13px; color: #555; max-width: 60rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #e3e3e3; padding: 0.4rem; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #444; }
footer.provenance { font-size: 13px; color: #555; border-top: 1px solid #eee; margin-top: 1rem; }
footer.provenance p { margin: 0.1rem 0; }
.scroll { overflow-x: auto; }
"""


def _figure(path: Path, root: Path, caption: str) -> str:
    svg = path.with_suffix(".svg").relative_to(root).as_posix()
    png = path.with_suffix(".png").relative_to(root).as_posix()
    return (f'<figure><a href="{escape(png)}"><img src="{escape(svg)}" alt="{escape(caption)}" loading="eager">'
            f"</a><figcaption>{escape(caption)}</figcaption></figure>")


def _section_html(part: Section, root: Path) -> str:
    gpu = part.records.get("provenance.machine.gpu_name", pd.Series(dtype=object)).dropna()
    heading = f"{gpu.iloc[0] + ' · ' if len(gpu) else ''}{part.title}"
    figures = [_figure(paths[0], root, caption) for caption, paths in write_charts(part, root / "charts")]
    parity = parity_table(part.parity)
    footer = "".join(f"<p>{escape(line)}</p>" for line in part.footer)
    decode = (f'<h3>Decode</h3><div class="scroll">{formats.to_html(display.decode_results_table(part.decode))}'
              "</div>\n") if len(part.decode) else ""
    return (f'<section id="results-{escape(part.machine)}"><h2>{escape(heading)}</h2>\n'
            f'<div class="scroll">{formats.to_html(display.results_table(part.table))}</div>\n{decode}'
            f'<h3>Charts</h3><div class="charts">{"".join(figures)}</div>\n'
            f"<details><summary>Parity cases at this commit ({len(parity)})</summary>"
            f'<div class="scroll">{formats.to_html(display.parity_cases_table(parity))}</div></details>\n'
            f'<footer class="provenance">{footer}</footer></section>\n')


def _history_html(frame: pd.DataFrame, root: Path, metric: str, thresholds: Thresholds,
                  repo: Path | str | None, include_dirty: bool) -> str:
    chunks = [f'<section id="history"><h2>Per-commit history</h2><p>Each chart is one configuration on one '
              f"machine: {escape(HISTORY_METRICS[metric][1])} at every stored commit. A commit is marked when "
              f"its timing samples differ from the previous commit's by Mann-Whitney U at p &lt; {thresholds.alpha}"
              f" and its median by more than a factor {thresholds.factor}.</p>"]
    for machine in sorted(set(frame["machine"])):
        commits = commits_table(select(frame, machine=machine), repo)
        chunks.append(f"<h3>{escape(machine)}</h3>"
                      f'<div class="scroll">{formats.to_html(display.commits_display(commits))}</div>')
        figures = []
        for key, history, paths in write_history_charts(frame, root / "history", metric, machine=machine,
                                                        thresholds=thresholds, repo=repo,
                                                        include_dirty=include_dirty):
            flagged = history[history["verdict"] == "regressed"]["commit"].tolist()
            note = f" — regressed at {', '.join(flagged)}" if flagged else ""
            figures.append(_figure(paths[0], root, f"{key.label()}{note}"))
        chunks.append(f'<div class="charts">{"".join(figures)}</div>' if figures
                      else "<p>No configuration has been measured at two or more commits yet.</p>")
    return "\n".join(chunks) + "</section>\n"


def write_site(frame: pd.DataFrame, directory: Path | str, *, machine: str | None = None, sha: str | None = None,
               repo: Path | str | None = None, metric: str = "tokens_per_s",
               thresholds: Thresholds = DEFAULT_THRESHOLDS, include_dirty: bool = False, store: str = "",
               notes: Sequence[str] = ()) -> Path:
    """Write the report site under `directory` and return the path of its index.html; `notes` name the store
    lines skipped on reading."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    parts = sections(frame, machine=machine, sha=sha, repo=repo)
    history_frame = frame if machine is None else select(frame, machine=machine)
    body = "".join(_section_html(part, root) for part in parts)
    body += _history_html(history_frame, root, metric, thresholds, repo, include_dirty)
    downloads = [p.name for p in write_tables(parts, root, notes=notes)]
    links = " ".join(f'<a href="{escape(name)}">{escape(name)}</a>' for name in downloads)
    nav = "".join(f'<a href="#results-{escape(p.machine)}">{escape(p.title)}</a>' for p in parts)
    counts = frame["kind"].value_counts()
    summary = (f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {escape(store or 'the store')}: "
               f"{int(counts.get('bench', 0))} benchmark and {int(counts.get('parity', 0))} parity records, "
               f"{frame['machine'].nunique()} machine(s), {frame['sha'].nunique()} commit(s)."
               + "".join(f" Not read: {escape(note)}." for note in notes))
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>teswap results</title>'
            f"<style>{CSS}</style></head>\n<body><header><h1>teswap results</h1><p>{summary}</p>"
            f'<nav>{nav}<a href="#history">history</a><a href="#downloads">downloads</a></nav></header>\n<main>'
            f'{body}<section id="downloads"><h2>Downloads</h2><p>The tables above: {links}</p></section>'
            "</main></body></html>\n")
    index = root / "index.html"
    index.write_text(page, encoding="utf-8")
    return index

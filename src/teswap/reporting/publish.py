"""The published report: one section per machine (its newest commit, or a chosen one), rendered as
Markdown, HTML, CSV or LaTeX, plus the charts of each section and the per-commit history charts. A
section with decode cells adds the decode table (TTFT, TPOT, ITL, decode tokens/s, stock beside
swapped) and its charts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

from teswap.reporting import charts, decode_charts, display, formats
from teswap.reporting.commits import commit_order
from teswap.reporting.decode import decode_groups, decode_table, empty_decode_table
from teswap.reporting.errors import ReportError
from teswap.reporting.footer import provenance_lines
from teswap.reporting.frame import ConfigKey, bench_frame, parity_frame, select
from teswap.reporting.history import histories
from teswap.reporting.regression import DEFAULT_THRESHOLDS, Thresholds
from teswap.reporting.tables import comparison_table, parity_table

FORMATS = ("md", "html", "csv", "tex")


@dataclass(frozen=True, kw_only=True)
class Section:
    """One machine at one commit: its records, the comparison table, the provenance footer and the decode table."""

    machine: str
    sha: str
    records: pd.DataFrame
    table: pd.DataFrame
    footer: list[str]
    decode: pd.DataFrame = field(default_factory=empty_decode_table)  # decode.decode_table: empty without decode cells

    @property
    def title(self) -> str:
        """e.g. `nvidia-h200_gpu-1 @ 1a2b3c4`."""
        return f"{self.machine} @ {self.sha[:7]}"

    @property
    def parity(self) -> pd.DataFrame:
        """This section's parity records."""
        return parity_frame(self.records)


def sections(frame: pd.DataFrame, *, machine: str | None = None, sha: str | None = None,
             repo: Path | str | None = None) -> list[Section]:
    """A section per machine with benchmark records: at `sha` if given, else at its newest commit."""
    bench = bench_frame(frame)
    machines = sorted(set(bench["machine"])) if machine is None else [machine]
    if machine is not None and machine not in set(frame["machine"]):
        raise ReportError(f"no records from machine {machine!r}; machines in the store: "
                          f"{', '.join(sorted(set(frame['machine'])))}")
    out = []
    for name in machines:
        on_machine = select(bench, machine=name)
        order = commit_order(on_machine, repo)
        chosen = sha or (order[-1] if order else None)
        if chosen is None:  # measured outside any git checkout: report those records as "nogit"
            records = select(frame, machine=name)
            records, chosen = records[records["sha"].isna()], "nogit"
        else:
            records = select(frame, machine=name, sha=chosen)
        if bench_frame(records).empty:
            continue
        table = comparison_table(bench_frame(records), parity_frame(records))
        out.append(Section(machine=name, sha=chosen, records=records, table=table, footer=provenance_lines(records),
                           decode=decode_table(bench_frame(records), parity_frame(records))))
    if not out:
        raise ReportError("no benchmark records to report" + (f" at commit {sha[:7]}" if sha else "")
                          + (f" on {machine}" if machine else ""))
    return out


def render(parts: list[Section], fmt: str, notes: Sequence[str] = ()) -> str:
    """All sections in one document of format md, html, csv or tex; `notes` (store lines skipped on reading,
    teswap.reporting.frame.load_frame_noting) close the md, html and tex documents."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "csv":
        return pd.concat([p.table for p in parts]).to_csv(index=False)
    chunks = []
    for part in parts:
        table = display.results_table(part.table)
        parity = display.parity_cases_table(parity_table(part.parity))
        decode = display.decode_results_table(part.decode) if len(part.decode) else None
        if fmt == "md":
            footer = "\n".join(f"<sub>{line}</sub><br>" for line in part.footer)
            decode_md = f"### Decode\n\n{formats.to_markdown(decode)}\n" if decode else ""
            chunks.append(f"## {part.title}\n\n{formats.to_markdown(table)}\n{decode_md}### Parity\n\n"
                          f"{formats.to_markdown(parity)}\n{footer}\n")
        elif fmt == "html":
            footer = "".join(f"<p>{escape(line)}</p>" for line in part.footer)
            decode_html = f"<h3>Decode</h3>\n{formats.to_html(decode)}" if decode else ""
            chunks.append(f"<h2>{escape(part.title)}</h2>\n{formats.to_html(table)}{decode_html}<h3>Parity</h3>\n"
                          f'{formats.to_html(parity)}<footer class="provenance">{footer}</footer>\n')
        else:
            chunks.append(formats.to_latex(table, caption=f"{part.title}. " + " ".join(part.footer)))
            if decode:
                chunks.append(formats.to_latex(decode, caption=f"{part.title}: decode, stock beside swapped."))
            chunks.append(formats.to_latex(parity, caption=f"{part.title}: parity of swapped and stock."))
    return "\n".join(chunks) + _notes(notes, fmt)


def _notes(notes: Sequence[str], fmt: str) -> str:
    """The store's skipped lines under the tables, so a reader knows what the report could not read."""
    if not notes:
        return ""
    if fmt == "md":
        return "\n**Not read from the store:**\n\n" + "".join(f"- {note}\n" for note in notes)
    if fmt == "html":
        items = "".join(f"<li>{escape(note)}</li>" for note in notes)
        return f"<h3>Not read from the store</h3><ul>{items}</ul>\n"
    return "\n" + "".join(f"% not read from the store: {note}\n" for note in notes)


def render_parity_csv(parts: list[Section]) -> str:
    """Every section's parity cases as one CSV (the figures behind the parity tables)."""
    return pd.concat([parity_table(p.parity) for p in parts]).to_csv(index=False)


def write_tables(parts: list[Section], directory: Path | str, stem: str = "results",
                 notes: Sequence[str] = ()) -> list[Path]:
    """`<stem>.md`, `.html`, `.csv` and `.tex` under `directory` (with `notes`, as render's), the parity cases as
    `<stem>-parity.csv` and the decode table (when there are decode cells) as `<stem>-decode.csv`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = directory / f"{stem}.{fmt}"
        path.write_text(render(parts, fmt, notes), encoding="utf-8")
        paths.append(path)
    path = directory / f"{stem}-parity.csv"
    path.write_text(render_parity_csv(parts), encoding="utf-8")
    paths.append(path)
    decode = [p.decode for p in parts if len(p.decode)]
    if decode:
        path = directory / f"{stem}-decode.csv"
        path.write_text(pd.concat(decode).to_csv(index=False), encoding="utf-8")
        paths.append(path)
    return paths


CHARTS = {"throughput": charts.throughput_chart, "speedup": charts.speedup_chart,
          "memory_energy": charts.memory_energy_chart}


DECODE_CHARTS = {"latency": decode_charts.decode_latency_chart, "speedup": decode_charts.decode_speedup_chart,
                 "throughput": decode_charts.decode_throughput_chart}
DECODE_CAPTIONS = {"latency": "TTFT and TPOT vs prompt length", "speedup": "TTFT and TPOT speedups with CIs",
                   "throughput": "decode tokens/s vs batch"}


def write_charts(part: Section, directory: Path | str) -> Iterator[tuple[str, list[Path]]]:
    """Each chart of a section as PNG and SVG, yielded as (caption, paths)."""
    folder = Path(directory) / part.machine
    for model, workload in charts.chart_groups(part.table):  # decode cells: their own charts, below
        for name, chart in CHARTS.items():
            figure = chart(part.table, model, workload)
            stem = f"{part.sha[:7]}_{model}_{workload}_{name}"
            yield f"{model} {workload}: {name.replace('_', ' and ')}", charts.save_figure(figure, folder, stem)
    for model, new_tokens in decode_groups(part.decode):
        for name, decode_chart in DECODE_CHARTS.items():
            figure = decode_chart(part.decode, model, new_tokens)
            stem = f"{part.sha[:7]}_{model}_decode{new_tokens}_{name}"
            caption = f"{model} decode ({new_tokens} new tokens): {DECODE_CAPTIONS[name]}"
            yield caption, charts.save_figure(figure, folder, stem)


def write_history_charts(frame: pd.DataFrame, directory: Path | str, metric: str = "tokens_per_s", *,
                         machine: str | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS,
                         repo: Path | str | None = None, include_dirty: bool = False,
                         ) -> Iterator[tuple[ConfigKey, pd.DataFrame, list[Path]]]:
    """A history chart per configuration measured at two or more commits, newest regressions first."""
    bench = select(bench_frame(frame), machine=machine)
    for key, history in histories(bench, metric, thresholds=thresholds, repo=repo, include_dirty=include_dirty):
        figure = charts.history_chart(history, key, metric)
        yield key, history, charts.save_figure(figure, Path(directory) / key.machine, f"{key.slug()}_{metric}")

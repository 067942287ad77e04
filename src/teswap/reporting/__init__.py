"""Reporting over the results store: DataFrames, published tables, charts, regression detection,
the static HTML site and github-action-benchmark JSON. `teswap report` and `teswap compare` are thin
wrappers over these functions, and notebooks/analysis.ipynb uses nothing else.

    frame.py        store records as flat DataFrames; selecting machines and commits
    tables.py       each swapped cell beside its stock baseline, with the parity verdict
    decode.py       every decode cell's TTFT, TPOT, ITL and tokens/s, stock beside swapped
    display.py      what the published tables show, as display cells
    formats.py      Markdown, HTML, LaTeX and plain-text rendering of those cells
    footer.py       the provenance lines under every table
    publish.py      the report: one section per machine, tables and charts written out
    charts.py       throughput, speedup, memory/energy and per-commit history charts
    decode_charts.py  TTFT and TPOT against prompt length, their speedups, decode tokens/s against batch
    commits.py      revisions and commit order from git
    history.py      one configuration across commits
    regression.py   did a commit regress? (Mann-Whitney U plus a minimum effect)
    mannwhitney.py  the rank test itself
    html.py         the static HTML site
    github_action_benchmark.py  JSON for github-action-benchmark dashboards
    errors.py       ReportError and CrossMachineError
"""

from teswap.reporting.charts import (
    chart_groups,
    history_chart,
    memory_energy_chart,
    save_figure,
    speedup_chart,
    throughput_chart,
)
from teswap.reporting.commits import commit_order, latest_sha, resolve_revision
from teswap.reporting.decode import decode_groups, decode_table
from teswap.reporting.decode_charts import decode_latency_chart, decode_speedup_chart, decode_throughput_chart
from teswap.reporting.display import (
    commits_display,
    comparison_display,
    decode_results_table,
    parity_cases_table,
    results_table,
)
from teswap.reporting.errors import CrossMachineError, ReportError
from teswap.reporting.formats import to_html, to_latex, to_markdown, to_text
from teswap.reporting.frame import ConfigKey, bench_frame, config_keys, load_frame, parity_frame, select
from teswap.reporting.github_action_benchmark import gab_entries, write_gab
from teswap.reporting.history import commits_table, histories, history_frame
from teswap.reporting.html import write_site
from teswap.reporting.mannwhitney import mann_whitney_u
from teswap.reporting.publish import Section, render, sections, write_charts, write_tables
from teswap.reporting.regression import Thresholds, compare_commits, compare_samples, has_regression
from teswap.reporting.tables import baseline_precision, comparison_table, parity_table

__all__ = [
    "ConfigKey", "CrossMachineError", "ReportError", "Section", "Thresholds", "baseline_precision", "bench_frame",
    "chart_groups", "commit_order", "commits_display", "commits_table", "compare_commits", "compare_samples",
    "comparison_display", "comparison_table", "config_keys", "decode_groups", "decode_latency_chart",
    "decode_results_table", "decode_speedup_chart", "decode_table", "decode_throughput_chart", "gab_entries",
    "has_regression", "histories", "history_chart", "history_frame", "latest_sha", "load_frame", "mann_whitney_u",
    "memory_energy_chart", "parity_cases_table", "parity_frame", "parity_table", "render", "resolve_revision",
    "results_table", "save_figure", "sections", "select", "speedup_chart", "throughput_chart", "to_html", "to_latex",
    "to_markdown", "to_text", "write_charts", "write_gab", "write_site", "write_tables",
]

"""`teswap report`: the published tables (Markdown, HTML, CSV, LaTeX), charts and the HTML site."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from teswap.reporting.publish import Section
    from teswap.reporting.regression import Thresholds

FORMATS = ("md", "html", "csv", "tex")


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="result tables, charts and an HTML site from the results store")
    report.add_argument("--results", default="results", help="the results store (default: results/)")
    report.add_argument("--format", choices=FORMATS, default="md", help="table format on stdout (default: md)")
    report.add_argument("--out", metavar="DIR", help="write results.{md,html,csv,tex} and charts/ (PNG, SVG) here")
    report.add_argument("--html", metavar="DIR", help="write the static HTML site (index.html and charts) here")
    report.add_argument("--gab", metavar="DIR", help="write github-action-benchmark JSON (customBiggerIsBetter.json, "
                        "customSmallerIsBetter.json) here; one machine (--machine when the store has several)")
    report.add_argument("--machine", help="only this machine (a folder name under the store)")
    report.add_argument("--commit", metavar="REV", help="report this commit (default: each machine's newest)")
    report.add_argument("--repo", default=".", help="git repository for revisions and commit order (default: .)")
    report.add_argument("--history-metric", choices=("tokens_per_s", "time_s"), default="tokens_per_s",
                        help="metric of the per-commit history charts (default: tokens_per_s)")
    report.add_argument("--factor", type=float,
                        help="history marks: minimum ratio of medians (default: 1.05)")
    report.add_argument("--alpha", type=float,
                        help="history marks: Mann-Whitney U p-value threshold (default: 0.002)")
    report.add_argument("--include-dirty", action="store_true",
                        help="history: include records from modified working trees")
    report.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable (truncated or corrupted) record lines, with a warning")


def main(args: argparse.Namespace) -> int:
    from teswap.reporting.commits import resolve_revision
    from teswap.reporting.github_action_benchmark import write_gab
    from teswap.reporting.html import write_site
    from teswap.reporting.publish import render, sections, write_charts, write_tables

    frame, notes = load_store(args.results, args.skip_bad)
    thresholds = thresholds_from(args)
    sha = resolve_revision(args.commit, frame, args.repo) if args.commit else None
    parts = sections(frame, machine=args.machine, sha=sha, repo=args.repo)
    written: list[Path] = []
    if args.out:
        written += write_tables(parts, args.out, notes=notes)
        for part in parts:
            written += [path for _, paths in write_charts(part, Path(args.out) / "charts") for path in paths]
    if args.html:
        written.append(write_site(frame, args.html, machine=args.machine, sha=sha, repo=args.repo,
                                  metric=args.history_metric, thresholds=thresholds,
                                  include_dirty=args.include_dirty, store=str(args.results), notes=notes))
    if args.gab:
        written += write_gab(*_single_machine(parts), args.gab)
    if not written:
        sys.stdout.write(render(parts, args.format, notes))
    for path in written:
        print(path)
    return 0


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    """--factor/--alpha over the regression rule's own defaults (regression.Thresholds), not copies of them."""
    from teswap.reporting.regression import Thresholds

    given: dict[str, float] = {name: getattr(args, name) for name in ("factor", "alpha")
                               if getattr(args, name) is not None}
    return Thresholds(**given)


def load_store(results: str | Path, skip_bad: bool) -> tuple[pd.DataFrame, list[str]]:
    """The store as a frame, and the lines it skipped (a torn last line; bad lines with --skip-bad), each also a
    `teswap: warning:` line on stderr."""
    from teswap.reporting.frame import load_frame_noting

    frame, notes = load_frame_noting(results, skip_bad=skip_bad)
    for note in notes:
        print(f"teswap: warning: {note}", file=sys.stderr)
    return frame, notes


def _single_machine(parts: list[Section]) -> tuple[pd.DataFrame, pd.DataFrame]:
    from teswap.reporting.errors import ReportError
    from teswap.reporting.frame import bench_frame, parity_frame

    if len(parts) > 1:
        raise ReportError(f"--gab takes one machine; the store has {', '.join(p.machine for p in parts)}: "
                          "pass --machine")
    return bench_frame(parts[0].records), parity_frame(parts[0].records)

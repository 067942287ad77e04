"""`teswap compare`: did HEAD make any configuration slower than BASE? Exit 1 if so."""

from __future__ import annotations

import argparse
import sys

from teswap.commands.report import load_store, thresholds_from


def register(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser("compare", help="compare two commits' benchmark samples (Mann-Whitney U); "
                             "exit 1 on a significant regression")
    compare.add_argument("--base", required=True, metavar="REV", help="the reference commit (git revision or sha)")
    compare.add_argument("--head", required=True, metavar="REV", help="the commit under test")
    compare.add_argument("--results", default="results", help="the results store (default: results/)")
    compare.add_argument("--repo", default=".", help="git repository the revisions name (default: .)")
    compare.add_argument("--machine", help="compare only records from this machine (a folder name in the store)")
    compare.add_argument("--factor", type=float,
                         help="minimum ratio of median times to call a change (default: 1.05, i.e. 5%%)")
    compare.add_argument("--alpha", type=float,
                         help="Mann-Whitney U two-sided p-value threshold (default: 0.002, as asv)")
    compare.add_argument("--allow-cross-machine", action="store_true",
                         help="compare even when base and head were measured on different machines")
    compare.add_argument("--include-dirty", action="store_true",
                         help="use records from modified working trees too")
    compare.add_argument("--format", choices=("text", "md"), default="text", help="table format (default: text)")
    compare.add_argument("--gab", metavar="DIR", help="also write head's github-action-benchmark JSON here")
    compare.add_argument("--skip-bad", action="store_true",
                         help="skip unreadable (truncated or corrupted) record lines, with a warning")


def main(args: argparse.Namespace) -> int:
    from teswap.reporting import display, formats
    from teswap.reporting.commits import resolve_revision
    from teswap.reporting.errors import ReportError
    from teswap.reporting.frame import bench_frame, parity_frame, select
    from teswap.reporting.github_action_benchmark import write_gab
    from teswap.reporting.regression import compare_commits, count_verdicts, has_regression

    everything, _ = load_store(args.results, args.skip_bad)
    frame = select(everything, machine=args.machine)
    if frame.empty:
        raise ReportError(f"no records from machine {args.machine!r}; machines in the store: "
                          f"{', '.join(sorted(set(everything['machine'])))}")
    thresholds = thresholds_from(args)
    base, head = (resolve_revision(rev, frame, args.repo) for rev in (args.base, args.head))
    table = compare_commits(bench_frame(frame), base, head, thresholds,
                            allow_cross_machine=args.allow_cross_machine, include_dirty=args.include_dirty)
    render = formats.to_markdown if args.format == "md" else formats.to_text
    sys.stdout.write(render(display.comparison_display(table)))
    counts = ", ".join(f"{n} {verdict}" for verdict, n in count_verdicts(table).items())
    print(f"\n{_label(args.base, base)} -> {_label(args.head, head)}: {counts} "
          f"[Mann-Whitney U two-sided, p < {thresholds.alpha}, median ratio beyond {thresholds.factor}]")
    if args.gab:
        head_frame = select(frame, sha=head, include_dirty=args.include_dirty)
        for path in write_gab(bench_frame(head_frame), parity_frame(head_frame), args.gab):
            print(path)
    return 1 if has_regression(table) else 0


def _label(rev: str, sha: str) -> str:
    return sha[:7] if sha.startswith(rev.lower()) else f"{rev} ({sha[:7]})"

"""Commits in the store: resolving a revision to a stored sha, and ordering commits by commit time."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from teswap.reporting.errors import ReportError

_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


def _git(args: list[str], repo: Path | str | None, stdin: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo or Path.cwd(), input=stdin, capture_output=True,
                             text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit_times(shas: Iterable[str], repo: Path | str | None = None) -> dict[str, int]:
    """Committer time (Unix seconds) of each sha that the git repository at `repo` knows."""
    shas = sorted({sha for sha in shas if sha and _HEX.match(sha)})
    if not shas:
        return {}
    # cat-file first: `git show` fails as a whole on one unknown sha, and stored runs may come
    # from commits this clone has never fetched.
    checked = _git(["cat-file", "--batch-check=%(objectname) %(objecttype)"], repo, stdin="\n".join(shas) + "\n")
    known = [line.split()[0] for line in (checked or "").splitlines() if line.endswith(" commit")]
    if not known:
        return {}
    shown = _git(["show", "-s", "--format=%H %ct", *known], repo) or ""
    return {sha: int(time) for sha, time in (line.split() for line in shown.splitlines() if line.strip())}


def commit_order(frame: pd.DataFrame, repo: Path | str | None = None) -> list[str]:
    """The stored shas of `frame`, oldest first: by commit time where git knows the commit, else by
    the earliest record time of that sha."""
    stored = frame.dropna(subset=["sha"])
    if stored.empty:
        return []
    first_seen = stored.groupby("sha")["utc_time"].min()
    times = git_commit_times(first_seen.index, repo)
    key = {sha: float(times[sha]) if sha in times else first_seen[sha].timestamp() for sha in first_seen.index}
    return sorted(key, key=lambda sha: (key[sha], sha))


def resolve_revision(rev: str, frame: pd.DataFrame, repo: Path | str | None = None) -> str:
    """The full sha of git revision `rev` (or of a sha prefix), which must have records in `frame`."""
    stored = sorted(set(frame["sha"].dropna()))
    out = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], repo)
    if out and out.strip():
        sha = out.strip()
        if sha not in stored:
            raise ReportError(f"{rev} is commit {sha[:7]}, which has no records in the store; "
                              f"stored commits: {_listing(frame, stored)}")
        return sha
    matches = [sha for sha in stored if _HEX.match(rev) and sha.startswith(rev.lower())]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReportError(f"{rev} is ambiguous: it prefixes stored commits {', '.join(m[:10] for m in matches)}")
    raise ReportError(f"unknown revision {rev!r}: not a git revision here and no stored commit starts with it; "
                      f"stored commits: {_listing(frame, stored)}")


def _listing(frame: pd.DataFrame, shas: list[str], limit: int = 8) -> str:
    if not shas:
        return "none"
    newest = frame.dropna(subset=["sha"]).groupby("sha")["utc_time"].max().sort_values(ascending=False)
    shown = [sha[:7] for sha in newest.index[:limit]]
    return ", ".join(shown) + (f" and {len(shas) - limit} more" if len(shas) > limit else "")


def latest_sha(frame: pd.DataFrame, repo: Path | str | None = None) -> str | None:
    """The newest stored commit of `frame` (see commit_order), or None when no record has a sha."""
    order = commit_order(frame, repo)
    return order[-1] if order else None

"""Store records as pandas DataFrames: nested fields flattened into dotted columns.

A record `{"cell": {"model": "llama3-8b"}, "provenance": {"git": {"sha": ...}}}` becomes the columns
`cell.model` and `provenance.git.sha`; lists (`stats.samples_s`) stay one cell each. Every row also
gets `machine` (the store folder it came from), `source` (its file, relative to the store root),
`sha`, `commit` (seven hex digits, `-dirty` appended for a modified tree), `dirty` and `utc_time`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from teswap.reporting.errors import ReportError
from teswap.speed_options import options_label
from teswap.store.records import DECODE_METRICS, DECODE_PHASES
from teswap.store.runs import SkippedRecordWarning, iter_run_files, read_records

# The fields that name one benchmark cell; with the machine they name one configuration. new_tokens and
# options (schema 3) are 0 and "" outside decode cells.
CELL_FIELDS = ("model", "workload", "backend", "precision", "seq_len", "batch", "device", "new_tokens", "options")
CELL_DEFAULTS = {"cell.new_tokens": 0, "cell.options": ""}
CELL_COLUMNS = tuple(f"cell.{name}" for name in CELL_FIELDS)
CASE_COLUMNS = tuple(f"case.{name}" for name in ("model", "backend", "precision", "seq_len", "batch", "device",
                                                   "fuse_qkv", "seed"))
# Columns the reporting code reads; added as missing values where no record had them (e.g. no energy).
BENCH_COLUMNS = (*CELL_COLUMNS, "status", "reason", "stats.median_s", "stats.iqr_s", "stats.samples_s",
                 "metrics.tokens_per_s", "metrics.peak_allocated_bytes", "metrics.energy_per_token_j",
                 "metrics.mfu_vs_bf16_peak", "metrics.mfu_vs_precision_peak", "paired.speedup",
                 "paired.speedup_ci_low", "paired.speedup_ci_high", "paired.baseline_tokens_per_s",
                 "paired.samples_s", "paired.baseline_samples_s", "noise.noisy", "noise.reasons",
                 *(f"metrics.{name}" for name in DECODE_METRICS),
                 *(f"paired.phases.{phase}.{part}" for phase in DECODE_PHASES
                   for part in ("ratio", "ci_low", "ci_high", "baseline_samples")))
PARITY_COLUMNS = (*CASE_COLUMNS, "passed", "status", "reason", "policy.name", "policy.version",
                  "first_divergent_layer")
INTEGER_COLUMNS = ("cell.seq_len", "cell.batch", "cell.new_tokens", "case.seq_len", "case.batch", "case.seed")
COMMON_COLUMNS = ("kind", "run_id", "machine", "source", "sha", "commit", "dirty", "utc_time")


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and scalars kept as they are."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def frame_from_records(records: Iterable[Mapping[str, Any]], machine: str | None = None) -> pd.DataFrame:
    """Records (as the store writes them) as a flat DataFrame with the derived columns."""
    rows = [flatten(record) for record in records]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(COMMON_COLUMNS))
    if "machine" not in frame:
        frame["machine"] = machine or "unknown"
    if "source" not in frame:
        frame["source"] = None
    sha = frame.get("provenance.git.sha", pd.Series(None, index=frame.index))
    dirty = frame.get("provenance.git.dirty", pd.Series(False, index=frame.index))
    frame["sha"] = sha.where(sha.notna(), None)
    frame["dirty"] = [value is True for value in dirty]
    frame["commit"] = [_commit_label(s, d) for s, d in zip(frame["sha"], frame["dirty"], strict=True)]
    frame["utc_time"] = pd.to_datetime(frame.get("provenance.utc_time"), utc=True, errors="coerce")
    return frame


def _commit_label(sha: str | None, dirty: bool) -> str:
    return (sha[:7] if sha else "nogit") + ("-dirty" if dirty else "")


def load_frame(root: Path | str, skip_bad: bool = False) -> pd.DataFrame:
    """Every parity and benchmark record under `root` as one flat DataFrame (migrated on read)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"results directory {root} does not exist; pass --results DIR (a teswap results store)")
    rows = []
    for path in iter_run_files(root):
        for record in read_records(path, skip_bad=skip_bad):
            rows.append({**record, "machine": path.parent.name, "source": str(path.relative_to(root))})
    if not rows:
        raise ReportError(f"no records under {root}: the store is empty (benchmarks and parity runs write there)")
    return frame_from_records(rows)


def load_frame_noting(root: Path | str, skip_bad: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """load_frame, and a note naming each line it skipped (a torn last line always; other bad lines with
    skip_bad), for the report to show; other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRecordWarning)
        frame = load_frame(root, skip_bad=skip_bad)
    notes = []
    for warning in caught:
        if issubclass(warning.category, SkippedRecordWarning):
            notes.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return frame, notes


def _kind(frame: pd.DataFrame, kind: str, columns: Iterable[str],
          defaults: Mapping[str, Any] | None = None) -> pd.DataFrame:
    part = frame[frame["kind"] == kind].dropna(axis=1, how="all").copy()
    for column in (*COMMON_COLUMNS, *columns):
        if column not in part:
            part[column] = None
    for column, value in (defaults or {}).items():  # cells written before a field existed (or by hand)
        part[column] = part[column].where(part[column].notna(), value) if len(part) else part[column]
    for column in INTEGER_COLUMNS:  # float after the concat with the other kind's NaNs; int again here
        if column in part and part[column].notna().all() and len(part):
            part[column] = part[column].astype(int)
    return part.reset_index(drop=True)


def bench_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The benchmark records, with every column the reporting code reads present."""
    return _kind(frame, "bench", BENCH_COLUMNS, CELL_DEFAULTS)


def parity_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The parity records, with every column the reporting code reads present."""
    return _kind(frame, "parity", PARITY_COLUMNS)


def select(frame: pd.DataFrame, *, machine: str | None = None, sha: str | None = None,
           include_dirty: bool = True) -> pd.DataFrame:
    """Rows of one machine and/or one commit (full sha or prefix); optionally without dirty trees."""
    mask = pd.Series(True, index=frame.index)
    if machine is not None:
        mask &= frame["machine"] == machine
    if sha is not None:
        mask &= frame["sha"].fillna("").str.startswith(sha)
    if not include_dirty:
        mask &= ~frame["dirty"]
    return frame[mask]


@dataclass(frozen=True, kw_only=True)
class ConfigKey:
    """One benchmark configuration: a cell on a machine. Commits are compared per configuration."""

    machine: str
    model: str
    workload: str
    backend: str
    precision: str
    seq_len: int
    batch: int
    device: str
    new_tokens: int = 0
    options: str = ""

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> ConfigKey:
        """The configuration of one flat bench row."""
        cell = {name: row[f"cell.{name}"] for name in CELL_FIELDS}
        return cls(machine=row["machine"], **{**cell, "seq_len": int(cell["seq_len"]), "batch": int(cell["batch"]),
                                              "new_tokens": int(cell["new_tokens"]), "options": str(cell["options"])})

    def mask(self, bench: pd.DataFrame) -> pd.Series:
        """Which rows of `bench` belong to this configuration."""
        mask = bench["machine"] == self.machine
        for name, value in asdict(self).items():
            if name != "machine":
                mask &= bench[f"cell.{name}"] == value
        return mask

    def label(self) -> str:
        """A short human name, e.g. `llama3-8b prefill seq=2048 batch=1 te/bf16 cuda`
        (decode: `... seq=512 new=128 batch=1 te/bf16+cuda-graphs cuda`)."""
        new = f" new={self.new_tokens}" if self.workload == "decode" else ""
        options = options_label(self.options)
        return (f"{self.model} {self.workload} seq={self.seq_len}{new} batch={self.batch} "
                f"{self.backend}/{self.precision}{options} {self.device}")

    def slug(self) -> str:
        """A file-name-safe form of the label."""
        parts = [str(v) for k, v in asdict(self).items() if k != "machine" and not (k in ("new_tokens", "options")
                                                                                   and self.workload != "decode")]
        return "_".join(parts).replace("/", "-").replace(" ", "-").replace("+", "-")


def config_keys(bench: pd.DataFrame) -> list[ConfigKey]:
    """The distinct configurations in `bench`, sorted by machine and cell."""
    if bench.empty:
        return []
    unique = bench.drop_duplicates(subset=["machine", *CELL_COLUMNS])
    keys = {ConfigKey.of(row) for row in unique.to_dict("records")}
    return sorted(keys, key=lambda k: tuple(str(v).zfill(8) if isinstance(v, int) else v for v in asdict(k).values()))

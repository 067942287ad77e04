"""The results store: append-only JSON-lines files, one per run, never overwritten.

Layout (documented in results/README.md):

    <root>/<machine>/<utc>_<sha7>[-dirty]_<run_id>.jsonl

`<machine>` is a slug of the GPU name (or CPU model) and hostname, so runs from different machines
never share a folder. Each line is one record (a parity case or a benchmark cell) with
`schema_version`, `kind`, `run_id` and full provenance. A line is written whole under an exclusive
file lock, flushed and fsynced before `append` returns, so a crash or Ctrl-C loses no finished record
and two writers in one file cannot interleave. A killed writer leaves at worst one torn last line
(cut short: no newline at the end of the file); the loader skips it with a TornRecordWarning naming
the file and line. Any other unreadable line (in the middle of a file, or a whole last line that is not
a record) is corruption: an error by file and line, or skipped with a warning when asked.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from teswap.errors import TeswapError
from teswap.store.provenance import Provenance
from teswap.store.ranks import RankInfo, rank_info
from teswap.store.records import Record

SCHEMA_VERSION = 3
RECORD_KINDS = ("parity", "bench")


class StoreError(TeswapError):
    """A results file cannot be read; the message names the file and line."""


class SkippedRecordWarning(UserWarning):
    """An unreadable line was skipped; the message names the file and line (reports show it)."""


class TornRecordWarning(SkippedRecordWarning):
    """A run file's last line was cut short (a writer killed mid-write): skipped, named by file and line."""


def machine_slug(provenance: Provenance | dict[str, Any]) -> str:
    """A folder name for the machine: GPU (or CPU) model and hostname, filesystem-safe.

    Takes a Provenance or a stored record's "provenance" dict, so a record names its machine the way
    the store's folder does.
    """
    machine = asdict(provenance.machine) if isinstance(provenance, Provenance) else provenance.get("machine", {})
    device = machine.get("gpu_name") or machine.get("cpu_model") or "unknown"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{device}_{machine.get('hostname')}").strip("-").lower()


def run_file_name(provenance: Provenance, run_id: str) -> str:
    stamp = provenance.utc_time.replace("-", "").replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
    sha = (provenance.git.sha or "nogit")[:7] + ("-dirty" if provenance.git.dirty else "")
    return f"{stamp}_{sha}_{run_id}.jsonl"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class RunWriter:
    """Appends records of one run to its own file; every append is durable when it returns."""

    path: Path
    run_id: str
    provenance: Provenance
    rank: RankInfo | None = None  # set under torchrun: each rank writes its own file

    def append(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Write one record (kind, run id, provenance and `fields`) as one locked, fsynced line."""
        if kind not in RECORD_KINDS:
            raise ValueError(f"record kind must be one of {RECORD_KINDS}, got {kind!r}")
        record = {"schema_version": SCHEMA_VERSION, "kind": kind, "run_id": self.run_id,
                  "provenance": self.provenance.to_dict(), **fields}
        if self.rank is not None and self.rank.distributed:
            record["rank"] = {"rank": self.rank.rank, "world_size": self.rank.world_size,
                              "local_rank": self.rank.local_rank}
        line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
        append_line(self.path, line)
        return record

    def write(self, record: Record) -> dict[str, Any]:
        """Write a typed record (teswap.store.records); returns what was stored."""
        return self.append(record.kind, record.fields())


def append_line(path: Path, line: str) -> None:
    """Append one whole line under an exclusive lock, then flush and fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_run(root: Path | str, provenance: Provenance, run_id: str | None = None,
             rank: RankInfo | None = None) -> RunWriter:
    """A writer for a new run file under `root`; refuses to reuse an existing file name.

    Under torchrun every rank gets its own file (`..._rank<R>of<W>.jsonl`) with the run id the
    launcher shares (TESWAP_RUN_ID or TORCHELASTIC_RUN_ID), so the ranks' records merge by run id.
    """
    rank = rank or rank_info()
    run_id = run_id or rank.run_id or new_run_id()
    name = run_file_name(provenance, run_id).replace(".jsonl", f"{rank.file_suffix()}.jsonl")
    path = Path(root) / machine_slug(provenance) / name
    if path.exists():
        raise StoreError(f"{path} already exists: results files are never overwritten")
    return RunWriter(path=path, run_id=run_id, provenance=provenance, rank=rank)


def iter_run_files(root: Path | str) -> Iterator[Path]:
    yield from sorted(Path(root).glob("*/*.jsonl"))


def read_records(path: Path, *, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Records of one file, migrated to the current schema. A torn last line (no newline at the end of
    the file) is skipped with a TornRecordWarning; other bad lines raise (or, with skip_bad, warn and skip)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(_parse(line))
            except ValueError as err:
                message = f"{path}:{number}: unreadable record ({err})"
                # Only the last line can lack its newline; cut short, it is no JSON: a write that never finished.
                if not line.endswith("\n") and isinstance(err, json.JSONDecodeError):
                    warnings.warn(f"{message}; a torn last line (a write cut short), skipped", TornRecordWarning,
                                  stacklevel=2)
                elif skip_bad:
                    warnings.warn(f"{message}; the file may be corrupted; skipped", SkippedRecordWarning,
                                  stacklevel=2)
                else:
                    raise StoreError(f"{message}; the file may be corrupted (load with skip_bad=True / --skip-bad "
                                     "to skip it)") from None
    return records


def _parse(line: str) -> dict[str, Any]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return migrate(record)


def load_records(root: Path | str, *, skip_bad: bool = False, kind: str | None = None) -> list[dict[str, Any]]:
    """Every record under `root` (optionally of one kind), oldest file first."""
    out: list[dict[str, Any]] = []
    for path in iter_run_files(root):
        out.extend(r for r in read_records(path, skip_bad=skip_bad) if kind is None or r["kind"] == kind)
    return out


def migrate(record: dict[str, Any]) -> dict[str, Any]:
    """Bring an older record to SCHEMA_VERSION; refuse newer ones (written by a newer teswap)."""
    version = record.get("schema_version")
    if not isinstance(version, int):
        raise ValueError("record has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise ValueError(f"schema_version {version} is newer than this teswap reads ({SCHEMA_VERSION}); upgrade")
    for step in range(version, SCHEMA_VERSION):
        record = _MIGRATIONS[step](record)
    return record


def _bench_1_to_2(record: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 times each swapped cell paired with its stock baseline. A schema-1 bench record was
    timed alone: no paired rounds, no noise verdict, no clock readings (null, so readers can tell)."""
    if record.get("kind") == "bench":
        record = {"paired": None, "noise": None, "clocks": None, **record}
    return {**record, "schema_version": 2}


def _bench_2_to_3(record: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 adds the decode workload: a cell's `new_tokens` (0 outside decode) and speed `options`
    ("" for none), and a record's `decode` field (null outside decode). Older cells had none of them."""
    if record.get("kind") == "bench":
        cell = record.get("cell")
        if isinstance(cell, dict):
            record = {**record, "cell": {**cell, "new_tokens": cell.get("new_tokens", 0),
                                         "options": cell.get("options", "")}}
        record = {"decode": None, **record}
    return {**record, "schema_version": 3}


# _MIGRATIONS[v] turns a version-v record into version v+1.
_MIGRATIONS: dict[int, Any] = {1: _bench_1_to_2, 2: _bench_2_to_3}

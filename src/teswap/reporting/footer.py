"""The provenance footer under every published table: GPU, driver, CUDA, libraries, commit, date."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def _distinct(frame: pd.DataFrame, column: str) -> str:
    values = [str(v) for v in dict.fromkeys(frame[column].dropna())] if column in frame else []
    return " / ".join(values) if values else "n/a"


def _joined(frame: pd.DataFrame, parts: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{label} {_distinct(frame, f'provenance.{column}')}" for label, column in parts)


def provenance_lines(records: pd.DataFrame) -> list[str]:
    """Three lines saying where the records' numbers came from; several values are joined by " / "."""
    if records.empty:
        return []
    gpu = _distinct(records, "provenance.machine.gpu_name")
    gpu_text = "GPU: none (CPU run)" if records["provenance.machine.gpu_name"].isna().all() else (
        f"GPU: {gpu} ×{_distinct(records, 'provenance.machine.gpu_count')} (compute capability "
        f"{_distinct(records, 'provenance.machine.compute_capability')}), "
        + _joined(records, [("driver", "machine.driver_version"), ("CUDA", "machine.cuda_runtime")]))
    machine = (f"{gpu_text}; CPU: {_distinct(records, 'provenance.machine.cpu_model')}; "
               f"host: {_distinct(records, 'provenance.machine.hostname')}")
    libraries = "Libraries: " + _joined(records, [
        ("Python", "libraries.python"), ("torch", "libraries.torch"), ("transformers", "libraries.transformers"),
        ("transformer_engine", "libraries.transformer_engine"), ("teswap", "libraries.teswap")])
    times = records["utc_time"].dropna()
    span = "n/a" if times.empty else (f"{times.min():%Y-%m-%d %H:%M}" + (
        f" to {times.max():%Y-%m-%d %H:%M}" if times.max() != times.min() else "") + " UTC")
    shas = ", ".join(dict.fromkeys(records["commit"]))
    branch = _distinct(records, "provenance.git.branch")
    commit = f"Commit: {shas} (branch {branch}); measured {span}; {records['run_id'].nunique()} run(s)"
    return [machine, libraries, commit]

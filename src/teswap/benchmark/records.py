"""Benchmark records (kind "bench"): the fields of one cell, its resume key, and finding finished cells.

A record is what `RunWriter.write(record)` writes: the store adds schema_version, kind,
run_id and provenance (commit, machine, libraries, UTC time); `bench_record` builds the rest.
Units are in the names (`_s`, `_bytes`, `_j`, `_w`, `_c`, `_mhz`). A figure that could not be
measured is None, with the reason in the matching `*_null_reason` field.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.plan import Cell
from teswap.precision.runtime import recipe_record
from teswap.store.provenance import Provenance
from teswap.store.records import DECODE_METRICS, BenchRecord
from teswap.store.runs import load_records, machine_slug

FINISHED = ("ok", "oom")  # a rerun of the same sweep on the same commit and machine skips these
CELL_FIELDS = ("model", "workload", "backend", "precision", "seq_len", "batch", "device")
# Cell fields added by schema 3 (decode), and the mark of a cell run past its model's positions (only in such
# cells); in the resume identity only when set, so older cells keep their keys.
DECODE_CELL_FIELDS = {"new_tokens": 0, "options": ""}
OPTIONAL_CELL_FIELDS = {**DECODE_CELL_FIELDS, "beyond_max_positions": False}
MODEL_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "vocab_size", "params")
STATS_FIELDS = ("median_s", "iqr_s", "mean_s", "std_s", "min_s", "count", "warmup", "samples_s")
METRIC_FIELDS = (
    "tokens_per_s", "peak_allocated_bytes", "peak_reserved_bytes", "peak_memory_method", "energy_j",
    "energy_per_token_j", "power_avg_w", "power_peak_w", "temperature_max_c", "sm_clock_avg_mhz", "energy_method",
    "energy_null_reason", "flops_per_token", "mfu_vs_bf16_peak", "mfu_vs_precision_peak", "mfu_null_reason",
    "idle_power_w", *DECODE_METRICS,
)  # the sweep adds its memory check's estimated_peak_bytes, estimated_peak, free_memory_bytes and _method


def model_config_fields(config: PretrainedConfig) -> dict[str, Any]:
    """The shape fields of a record's "model_config", with the parameter count (tied embeddings once)."""
    shape = ModelShape.from_config(config)
    return {
        "hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers, "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads, "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size, "params": shape.params, "tie_word_embeddings": shape.tie_word_embeddings,
        "model_type": getattr(config, "model_type", None),
        **({"num_experts": shape.num_experts, "experts_per_token": shape.experts_per_token,
            "moe_intermediate_size": shape.moe_intermediate_size, "moe_layers": shape.moe_layers}
           if shape.num_experts else {}),
    }


def recipe_fields(precision: str, backend: str) -> dict[str, Any] | None:
    """The FP8 recipe a swapped cell ran under, every field (None without FP8, and for stock)."""
    return recipe_record(precision, backend)


def cell_key(cell: dict[str, Any], model_config: dict[str, Any], provenance: dict[str, Any]) -> str:
    """Identity of a measured cell for resuming: the cell, the model shape, the commit and the machine."""
    git = provenance.get("git", {})
    decode = {name: cell[name] for name, unset in OPTIONAL_CELL_FIELDS.items() if cell.get(name, unset) != unset}
    identity = {
        "cell": {**{name: cell.get(name) for name in CELL_FIELDS}, **decode},
        "model_config": {name: model_config.get(name) for name in MODEL_CONFIG_FIELDS},
        "commit": git.get("sha"), "dirty": git.get("dirty"), "machine": machine_slug(provenance),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def bench_record(*, cell: Cell, model_config: dict[str, Any], provenance: Provenance, status: str,
                 reason: str | None, stats: dict[str, Any] | None, metrics: dict[str, Any],
                 gpu: dict[str, Any], settings: dict[str, Any], paired: dict[str, Any] | None = None,
                 noise: dict[str, Any] | None = None, clocks: dict[str, Any] | None = None,
                 decode: dict[str, Any] | None = None, distributed: dict[str, Any] | None = None) -> BenchRecord:
    """The record of one cell; every METRIC_FIELDS key is present in its metrics (None when unmeasured).

    A skipped cell records no recipe: its backend never held one (and may not be importable).
    """
    cell_dict = cell.to_dict()
    return BenchRecord(
        cell=cell_dict, cell_key=cell_key(cell_dict, model_config, provenance.to_dict()),
        cell_finished_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        recipe=None if status == "skipped" else recipe_fields(cell.precision, cell.backend),
        model_config=model_config, status=status,
        reason=reason, stats=stats, metrics={**dict.fromkeys(METRIC_FIELDS), **metrics}, gpu=gpu,
        settings=settings, paired=paired, noise=noise, clocks=clocks, decode=decode, distributed=distributed,
    )


def finished_records(root: Path | str, keys: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The newest ok/oom record under `root` for each of `keys`, and any warnings about unreadable lines.

    The key is recomputed from each record's own fields, so a record written by a crashed or
    interrupted run counts exactly when it matches this cell, commit and machine.
    """
    wanted = set(keys)
    if not Path(root).is_dir():
        return {}, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_records(root, kind="bench", skip_bad=True)  # a killed writer may leave a torn last line
    found: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.get("status") not in FINISHED or "cell" not in record or "model_config" not in record:
            continue
        key = cell_key(record["cell"], record["model_config"], record.get("provenance", {}))
        if key in wanted:
            found[key] = record
    return found, [str(w.message) for w in caught]

"""torchrun support: one file per rank under a shared run id, and per-cell merging across ranks."""

from __future__ import annotations

import pytest

from teswap.store.provenance import capture_provenance
from teswap.store.ranks import aggregate_ranks, rank_info
from teswap.store.runs import load_records, open_run

CELL = {"model": "tiny", "workload": "prefill", "backend": "torch", "precision": "fp32", "seq_len": 128,
        "batch": 2, "device": "cuda"}


def _bench(tokens_per_s, energy_j, energy_per_token_j, peak, median_s=0.1):
    return {"cell": CELL, "status": "ok", "stats": {"median_s": median_s},
            "metrics": {"tokens_per_s": tokens_per_s, "energy_j": energy_j, "energy_per_token_j": energy_per_token_j,
                        "peak_allocated_bytes": peak, "peak_reserved_bytes": peak, "power_peak_w": 300.0}}


def test_rank_info_reads_torchrun_environment():
    info = rank_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "job/42"})
    assert (info.rank, info.world_size, info.local_rank, info.run_id) == (3, 4, 1, "job-42")
    assert info.file_suffix() == "_rank3of4"
    assert rank_info({}).distributed is False and rank_info({}).file_suffix() == ""
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        rank_info({"RANK": "4", "WORLD_SIZE": "4"})


def test_ranks_write_own_files_and_merge_into_totals(tmp_path):
    provenance = capture_provenance()
    per_rank = [(1000.0, 50.0, 0.01, 10), (800.0, 45.0, 0.0125, 12)]
    for rank, (tps, energy, per_token, peak) in enumerate(per_rank):
        env = {"RANK": str(rank), "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "launch-7"}
        writer = open_run(tmp_path, provenance, rank=rank_info(env))
        assert writer.path.name.endswith(f"_launch-7_rank{rank}of2.jsonl")
        writer.append("bench", _bench(tps, energy, per_token, peak))
    records = load_records(tmp_path)
    assert {r["rank"]["rank"] for r in records} == {0, 1} and {r["run_id"] for r in records} == {"launch-7"}
    (merged,) = aggregate_ranks(records)
    assert merged["world_size"] == 2
    assert merged["metrics"]["tokens_per_s"] == 1800.0 and merged["metrics"]["tokens_per_s_per_gpu"] == 900.0
    assert merged["metrics"]["energy_j"] == 95.0 and merged["metrics"]["peak_allocated_bytes"] == 12
    # 50 J over 5000 tokens and 45 J over 3600 tokens: 95 J / 8600 tokens
    assert merged["metrics"]["energy_per_token_j"] == pytest.approx(95.0 / 8600.0)


def test_a_missing_rank_is_an_error_not_a_smaller_total(tmp_path):
    provenance = capture_provenance()
    writer = open_run(tmp_path, provenance, rank=rank_info({"RANK": "1", "WORLD_SIZE": "2", "TESWAP_RUN_ID": "r"}))
    writer.append("bench", _bench(900.0, None, None, 10))
    with pytest.raises(ValueError, match=r"has ranks \[1\] of world size 2; run incomplete"):
        aggregate_ranks(load_records(tmp_path))

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
    # torchrun's default id, the same for every launch without --rdzv-id: no id, so two launches never merge
    assert rank_info({"RANK": "0", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}).run_id is None
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
    assert merged["world_size"] == 2 and merged["plan"] == "replicas"
    # Unsynchronised records (no per-rank times gathered): all tokens (100 per step per rank) over the slowest
    # rank's median step time, never the sum of each rank's rate over its own window
    assert merged["metrics"]["tokens_per_s"] == pytest.approx(2 * 100.0 / 0.1)
    assert merged["metrics"]["tokens_per_s_per_gpu"] == pytest.approx(1000.0)
    assert merged["metrics"]["energy_j"] == 95.0 and merged["metrics"]["peak_allocated_bytes"] == 12
    # 50 J over 5000 tokens and 45 J over 3600 tokens: 95 J / 8600 tokens
    assert merged["metrics"]["energy_per_token_j"] == pytest.approx(95.0 / 8600.0)


def _synced(rank, plan, dp, tp, medians, merged_median, energy_j=10.0):
    return {"kind": "bench", "status": "ok", "run_id": "r", "cell": CELL, "rank": {"rank": rank, "world_size": dp * tp},
            "stats": {"median_s": merged_median}, "paired": {"speedup": 1.25},
            "metrics": {"tokens_per_s": 256 / merged_median, "energy_j": energy_j, "energy_per_token_j": 0.01,
                        "peak_allocated_bytes": 100 + rank, "mfu_vs_bf16_peak": 0.4, "mfu_vs_precision_peak": 0.2},
            "distributed": {"plan": plan, "dp_size": dp, "tp_size": tp, "tokens_per_step": 256,
                            "rank_median_s": medians}}


@pytest.mark.parametrize(("plan", "dp", "tp"), [("fsdp", 2, 1), ("tp", 1, 2), ("fsdp+tp", 2, 2)])
def test_synchronised_ranks_merge_by_the_slowest_rank(plan, dp, tp):
    medians = [0.10, 0.12, 0.11, 0.10][: dp * tp]
    records = [_synced(rank, plan, dp, tp, medians, merged_median=0.125) for rank in range(dp * tp)]
    (merged,) = aggregate_ranks(records)
    metrics = merged["metrics"]
    assert (merged["plan"], merged["dp_size"], merged["tp_size"]) == (plan, dp, tp)
    assert metrics["tokens_per_s"] == pytest.approx(256 * dp / 0.125)  # tensor-parallel ranks share their tokens
    assert metrics["slowest_rank"] == 1 and metrics["peak_allocated_bytes"] == 100 + dp * tp - 1
    assert metrics["energy_j"] == pytest.approx(10.0 * dp * tp)  # energy summed over ranks
    # each rank's window covered 1000 tokens; tensor-parallel ranks counted them together
    assert metrics["energy_per_token_j"] == pytest.approx(10.0 * dp * tp / (1000 * dp * tp / tp))
    assert metrics["mfu_vs_bf16_peak"] == pytest.approx(0.4 / tp)
    assert merged["paired"]["speedup"] == 1.25  # the rounds were the launch's: the paired speedup stands


def test_a_missing_rank_is_an_error_not_a_smaller_total(tmp_path):
    provenance = capture_provenance()
    writer = open_run(tmp_path, provenance, rank=rank_info({"RANK": "1", "WORLD_SIZE": "2", "TESWAP_RUN_ID": "r"}))
    writer.append("bench", _bench(900.0, None, None, 10))
    with pytest.raises(ValueError, match=r"has ranks \[1\] of world size 2; run incomplete"):
        aggregate_ranks(load_records(tmp_path))


def test_plans_outside_torchrun_are_refused_with_one_line(capsys):
    from teswap.cli import main

    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            patch.delenv(name, raising=False)
        assert main(["check", "--parallel", "fsdp", "--no-record"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "teswap: error: --parallel fsdp shards the pair over ranks: launch it with "
        "`torchrun --nproc-per-node N -m teswap.cli ...`"]


def test_mesh_degrees_follow_the_plan():
    from teswap.distributed.launch import LaunchError, mesh_degrees

    assert mesh_degrees("replicas", 4, None) == (4, 1) and mesh_degrees("fsdp", 4, None) == (4, 1)
    assert mesh_degrees("tp", 4, None) == (1, 4) and mesh_degrees("fsdp+tp", 4, None) == (2, 2)
    with pytest.raises(LaunchError, match="multiple of --tp-size 2"):
        mesh_degrees("fsdp+tp", 2, None)


def test_a_launch_mixing_versions_or_commits_is_refused():
    from teswap.distributed.launch import LaunchError
    from teswap.distributed.provenance import check_same

    base = {"rank": 0, "commit": "abc", "dirty": False, "python": "3.11", "torch": "2.13", "transformers": "5.24",
            "transformer_engine": None, "teswap": "0.1"}
    check_same([base, {**base, "rank": 1}])
    with pytest.raises(LaunchError, match=r"different torch \(rank 0: 2.13, rank 1: 2.12\)"):
        check_same([base, {**base, "rank": 1, "torch": "2.12"}])
    with pytest.raises(LaunchError, match="different commit"):
        check_same([base, {**base, "rank": 1, "commit": "def"}])


class _TwoRanks:
    """A RankSync stand-in for two ranks, the other one always 2 ms slower on odd steps (in-process)."""

    active = True
    rank = 0

    def __init__(self):
        self.barriers = 0

    def barrier(self):
        self.barriers += 1

    def slowest(self, times):
        other = [t + (0.002 if i % 2 else -0.0001) for i, t in enumerate(times)]
        return [max(a, b) for a, b in zip(times, other, strict=True)], [list(times), other]

    def max(self, value):
        return value


def test_rounds_take_each_step_at_its_slowest_rank_after_a_barrier():
    from teswap.benchmark.clocks import ClockLog
    from teswap.benchmark.plan import Cell
    from teswap.benchmark.rounds import Side, run_rounds
    from teswap.benchmark.timing import TimingPolicy

    times = iter([0.001 * (i % 3 + 1) for i in range(400)])

    class Timer:
        name = "fake"

        def time(self, step):
            return next(times)

    cell = Cell(model="tiny", workload="prefill", backend="stock", precision="fp32", seq_len=8, batch=1, device="cpu")
    sides = [Side(cell=cell, step=lambda: None), Side(cell=cell, step=lambda: None)]
    sync = _TwoRanks()
    policy = TimingPolicy(warmup=0, min_samples=4, max_samples=8, block_steps=2, min_rounds=2)
    rounds = run_rounds(sides, policy, Timer(), clocks=ClockLog(meter=None), sync=sync)
    assert sync.barriers == 4 * rounds.count  # one per block
    for side in (0, 1):
        own, other = rounds.rank_times[side]
        assert rounds.of(side) == [max(a, b) for a, b in zip(own, other, strict=True)]
        assert rounds.own[side] == own


@pytest.mark.parametrize(("version", "keyword"), [("2.20", "amax_reduction_group"), ("2.1", "fp8_group")])
def test_te_autocast_reduces_amax_over_the_group_it_is_given(monkeypatch, version, keyword):
    """Replicas hand TE each rank's own group (what TE's autocast / fp8_autocast take it as, by version);
    outside such a block TE keeps its default (nothing passed). The stand-in checks TE's recorded signature."""
    import torch

    import te_standin
    from teswap.precision.te_glue import amax_reduction_group, te_autocast

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    te_standin.install(monkeypatch, version)
    te_standin.AUTOCAST_CALLS.clear()
    own_rank = object()
    with amax_reduction_group(own_rank), te_autocast("fp8-delayed"):
        pass
    with te_autocast("fp8-delayed"):
        pass
    first, second = te_standin.AUTOCAST_CALLS[-2:]
    assert first["kwargs"][keyword] is own_rank and keyword not in second["kwargs"]

"""Regression detection: power against a 10% throughput drop, false-positive rate on equal draws,
and `teswap compare` end to end (git revisions, exit codes, machine refusal, github-action-benchmark)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from report_synthetic import fake_sha, git_repo, other_machine, teswap, timing_samples, write_commit
from teswap.reporting.errors import CrossMachineError, ReportError
from teswap.reporting.frame import bench_frame, load_frame
from teswap.reporting.regression import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    compare_commits,
    compare_samples,
    has_regression,
)

SEEDS = range(200)
MEDIAN_S = 0.02


def _rates(samples: int, noise: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> tuple[float, float]:
    """(share of seeds where a 10% throughput drop is called a regression, share where two draws
    from one distribution are called anything but no change)."""
    detected = false_alarms = 0
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        base = timing_samples(rng, MEDIAN_S, samples, noise)
        slower = timing_samples(rng, MEDIAN_S / 0.9, samples, noise)  # 10% fewer tokens/s
        same = timing_samples(rng, MEDIAN_S, samples, noise)
        detected += compare_samples(base, slower, thresholds).verdict == "regressed"
        false_alarms += compare_samples(base, same, thresholds).verdict != "no significant change"
    return detected / len(SEEDS), false_alarms / len(SEEDS)


@pytest.mark.parametrize(("samples", "noise", "min_power", "max_false_alarms"),
                         [(20, 0.02, 0.99, 0.01), (20, 0.05, 0.95, 0.02), (10, 0.02, 0.9, 0.01)])
def test_ten_percent_drop_is_flagged_and_equal_draws_are_not(samples, noise, min_power, max_false_alarms):
    power, false_alarms = _rates(samples, noise)
    assert power >= min_power, f"10% drop detected in only {power:.1%} of {len(SEEDS)} seeds"
    assert false_alarms <= max_false_alarms, f"false-positive rate {false_alarms:.1%} over {len(SEEDS)} seeds"


def test_rank_test_alone_is_calibrated():
    # Without the effect-size gate, equal draws must be called different at about the rate alpha.
    false_alarms = 0
    for seed in range(400):
        rng = np.random.default_rng(seed)
        result = compare_samples(timing_samples(rng, MEDIAN_S, 20), timing_samples(rng, MEDIAN_S, 20),
                                 Thresholds(factor=1.0, alpha=0.05))
        false_alarms += result.verdict != "no significant change"
    assert 0.02 <= false_alarms / 400 <= 0.08


def test_improvement_small_change_and_too_few_samples():
    rng = np.random.default_rng(0)
    base = timing_samples(rng, MEDIAN_S, 20)
    assert compare_samples(base, timing_samples(rng, MEDIAN_S * 0.8, 20)).verdict == "improved"
    # significant but below the 5% effect size: not a regression
    result = compare_samples(base, [s * 1.03 for s in base])
    assert result.p_value < 0.002 or result.verdict == "no significant change"
    assert result.verdict == "no significant change" and result.ratio == pytest.approx(1.03)
    # 4 vs 4 samples can never reach p < 0.002 (smallest exact p is 2/70)
    tiny = compare_samples(base[:4], [s * 2 for s in base[:4]])
    assert tiny.verdict == "too few samples"
    with pytest.raises(ReportError, match="factor"):
        Thresholds(factor=0.9)
    with pytest.raises(ReportError, match="alpha"):
        Thresholds(alpha=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A git repo with three commits and a store: commit 2 slows te/bf16 by 10% and OOMs torch at 2048."""
    root = tmp_path_factory.mktemp("compare")
    shas = git_repo(root / "repo", 3)
    store = root / "results"
    write_commit(store, shas[0], "2026-02-01T13:00:00+00:00", seed=10)
    write_commit(store, shas[1], "2026-02-02T13:00:00+00:00", seed=11)
    write_commit(store, shas[2], "2026-02-03T13:00:00+00:00", seed=12, slow={("te", "bf16"): 1 / 0.9},
                 oom=[("torch", "bf16", 2048)])
    return {"repo": root / "repo", "results": store, "shas": shas}


def test_compare_commits_flags_only_the_slowed_cells(store):
    bench = bench_frame(load_frame(store["results"]))
    shas = store["shas"]
    quiet = compare_commits(bench, shas[0], shas[1])
    assert not has_regression(quiet) and set(quiet["verdict"]) == {"no significant change"}
    table = compare_commits(bench, shas[1], shas[2])
    verdicts = {(r.backend, r.precision, r.seq_len): r.verdict for r in table.itertuples()}
    assert verdicts[("te", "bf16", 512)] == verdicts[("te", "bf16", 2048)] == "regressed"
    assert verdicts[("torch", "bf16", 2048)] == "broken in head"
    others = {k: v for k, v in verdicts.items() if k[:2] != ("te", "bf16") and k != ("torch", "bf16", 2048)}
    assert set(others.values()) == {"no significant change"}
    slowed = table[table["verdict"] == "regressed"]
    assert ((slowed["throughput_change"] > -0.14) & (slowed["throughput_change"] < -0.06)).all()
    assert has_regression(table)


def test_compare_cli_exit_codes_and_output(store, capsys):
    common = ["--results", str(store["results"]), "--repo", str(store["repo"])]
    assert teswap(["compare", "--base", "HEAD~2", "--head", "HEAD~1", *common]) == 0
    assert teswap(["compare", "--base", "HEAD~1", "--head", "HEAD", *common]) == 1
    out = capsys.readouterr().out
    assert "⚠ regressed" in out and "broken in head (oom)" in out and "2 regressed" in out
    # reversed, the slow-down reads as an improvement; a cell that starts working is not a failure
    assert teswap(["compare", "--base", "HEAD", "--head", "HEAD~1", *common]) == 0
    assert "2 improved" in capsys.readouterr().out
    # a sha prefix works without the repository
    assert teswap(["compare", "--base", store["shas"][0][:8], "--head", store["shas"][1][:8],
                   "--results", str(store["results"])]) == 0


def test_compare_cli_bad_revisions_are_one_line(store, capsys):
    common = ["--results", str(store["results"]), "--repo", str(store["repo"])]
    assert teswap(["compare", "--base", "no-such-rev", "--head", "HEAD", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("teswap: error: unknown revision 'no-such-rev'") and err.count("\n") == 1
    assert teswap(["compare", "--base", "HEAD", "--head", "HEAD", "--factor", "0.5", *common]) == 2
    assert "factor must be >= 1" in capsys.readouterr().err
    assert teswap(["compare", "--base", "HEAD~1", "--head", "HEAD", "--machine", "elsewhere", *common]) == 2
    assert "no records from machine 'elsewhere'; machines in the store: nvidia-h200_gpu-1" in capsys.readouterr().err


def test_compare_refuses_different_machines_unless_told(tmp_path, capsys):
    a, b = fake_sha(1), fake_sha(2)
    write_commit(tmp_path, a, "2026-03-01T10:00:00+00:00", seed=1)
    write_commit(tmp_path, b, "2026-03-02T10:00:00+00:00", seed=2, machine=other_machine())
    bench = bench_frame(load_frame(tmp_path))
    with pytest.raises(CrossMachineError, match="not comparable"):
        compare_commits(bench, a, b)
    assert teswap(["compare", "--base", a[:7], "--head", b[:7], "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nvidia-h200_gpu-1" in err and "nvidia-a100-sxm4-80gb_gpu-2" in err and "--allow-cross-machine" in err
    table = compare_commits(bench, a, b, allow_cross_machine=True)
    assert "machine" not in table and len(table) == 8 and (table["base_n"] == 20).all()


def test_compare_writes_github_action_benchmark_json(store, tmp_path):
    code = teswap(["compare", "--base", "HEAD~2", "--head", "HEAD~1", "--results", str(store["results"]),
                   "--repo", str(store["repo"]), "--gab", str(tmp_path)])
    assert code == 0
    bigger = json.loads((tmp_path / "customBiggerIsBetter.json").read_text())
    smaller = json.loads((tmp_path / "customSmallerIsBetter.json").read_text())
    assert len(bigger) == 8 and {e["unit"] for e in bigger} == {"tokens/s"}
    assert all(set(e) <= {"name", "unit", "value", "range", "extra"} and isinstance(e["value"], float)
               for e in bigger + smaller)
    assert len({e["name"] for e in bigger}) == 8 and all(store["shas"][1][:7] not in e["name"] for e in bigger)
    assert {e["unit"] for e in smaller} == {"ms", "mJ/token", "GiB"}
    records = [json.loads(line) for path in store["results"].glob("*/*.jsonl")
               for line in path.read_text().splitlines()]
    te_512 = next(r for r in records if r["kind"] == "bench" and r["provenance"]["git"]["sha"] == store["shas"][1]
                  and r["cell"]["backend"] == "te" and r["cell"]["precision"] == "bf16" and r["cell"]["seq_len"] == 512)
    entry = next(e for e in bigger if e["name"] == "llama3.2-1b prefill seq=512 batch=1 te/bf16 throughput")
    assert entry["value"] == pytest.approx(te_512["metrics"]["tokens_per_s"], rel=1e-6)
    assert "parity passed" in entry["extra"]

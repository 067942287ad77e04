"""Reports of paired records: every speedup with its CI (tables, charts), noise marks, unpaired
fallback for old records, and `teswap compare` on the paired per-round speedups."""

from __future__ import annotations

import json

import numpy as np
import pytest

from report_synthetic import fake_sha, teswap, write_commit
from teswap.reporting import charts, display, formats
from teswap.reporting.frame import bench_frame, load_frame, parity_frame
from teswap.reporting.regression import compare_commits
from teswap.reporting.tables import comparison_table
from teswap.statistics import independent_ratio

NOISY = ("te drift +14% (limit ±10%)",)


@pytest.fixture(scope="module")
def paired_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    write_commit(root, fake_sha(1), "2026-06-01T10:00:00+00:00", seed=21, paired=True,
                 noisy={("te", "bf16", 512): NOISY})
    return root


@pytest.fixture(scope="module")
def table(paired_store):
    frame = load_frame(paired_store)
    return comparison_table(bench_frame(frame), parity_frame(frame))


def _records(root):
    return [json.loads(line) for path in root.glob("*/*.jsonl") for line in path.read_text().splitlines()
            if json.loads(line)["kind"] == "bench"]


def test_a_paired_speedup_is_the_records_own_with_its_interval(table, paired_store):
    records = {(r["cell"]["backend"], r["cell"]["precision"], r["cell"]["seq_len"]): r for r in _records(paired_store)}
    assert set(table["speedup_basis"]) == {"paired"} and len(table) == 6
    for row in table.itertuples():
        paired = records[(row.backend, row.precision, row.seq_len)]["paired"]
        assert (row.speedup, row.speedup_ci_low, row.speedup_ci_high) == (
            paired["speedup"], paired["speedup_ci_low"], paired["speedup_ci_high"])
        assert row.paired_stock_tokens_per_s == pytest.approx(paired["baseline_tokens_per_s"])
        assert row.speedup_ci_low < row.speedup < row.speedup_ci_high
    noisy = table[table["noise"] == "noisy"]
    assert list(zip(noisy["backend"], noisy["seq_len"], strict=True)) == [("te", 512)]
    assert noisy["noise_reasons"].iloc[0] == NOISY[0]
    assert set(table["noise"]) == {"noisy", "steady"}


def test_tables_print_each_speedup_with_its_ci_and_the_noise_mark(table):
    markdown = formats.to_markdown(display.results_table(table))
    rows = [line for line in markdown.splitlines() if line.startswith("| llama")]
    for line, row in zip(rows, table.itertuples(), strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        speedup = cells[8]
        low, high = (float(v) for v in speedup.split("[")[1].rstrip("]").split(","))
        assert speedup.startswith(f"{row.speedup:.3f}×" if row.speedup_ci_high - row.speedup_ci_low < 0.02
                                  else f"{row.speedup:.2f}×")
        assert low == pytest.approx(row.speedup_ci_low, abs=0.006) and high == pytest.approx(row.speedup_ci_high,
                                                                                              abs=0.006)
        assert "ᵘ" not in speedup and cells[9] == ("noisy: " + NOISY[0] if row.noise == "noisy" else "steady")
        assert cells[6].startswith(f"{row.paired_stock_tokens_per_s:,.0f}")  # stock tok/s from the same rounds
    tex = formats.to_latex(display.results_table(table))
    assert r"$\pm$10\%" in tex and "±" not in tex


def test_old_unpaired_records_get_the_unpaired_interval_and_are_marked(tmp_path):
    write_commit(tmp_path, fake_sha(2), "2026-06-02T10:00:00+00:00", seed=22)  # no rounds: as schema 1
    frame = load_frame(tmp_path)
    bench = bench_frame(frame)
    table = comparison_table(bench, parity_frame(frame))
    assert set(table["speedup_basis"]) == {"unpaired"} and set(table["noise"]) == {"steady"}
    row = table[(table["backend"] == "te") & (table["precision"] == "bf16") & (table["seq_len"] == 2048)].iloc[0]
    cell = lambda backend: bench[(bench["cell.backend"] == backend) & (bench["cell.precision"] == "bf16")  # noqa: E731
                                 & (bench["cell.seq_len"] == 2048)].iloc[0]
    expected = independent_ratio(cell("stock")["stats.samples_s"], cell("te")["stats.samples_s"])
    assert (row["speedup_ci_low"], row["speedup_ci_high"]) == (expected.ci_low, expected.ci_high)
    assert row["speedup"] == pytest.approx(row["tokens_per_s"] / row["stock_tokens_per_s"])
    assert all(line.count(" ᵘ |") == 1 for line in formats.to_markdown(display.results_table(table)).splitlines()
               if line.startswith("| llama"))


def test_speedup_chart_draws_every_interval_on_an_axis_that_holds_one(table):
    (ax,) = charts.speedup_chart(table, "llama3.2-1b", "prefill").axes
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    drawn = sorted(round(float(y), 9) for bar in bars for segment in bar.get_segments() for y in segment[:, 1])
    expected = sorted(round(float(y), 9) for y in (*table["speedup_ci_low"], *table["speedup_ci_high"]))
    assert drawn == expected
    low, high = ax.get_ylim()
    assert low < min(1.0, table["speedup_ci_low"].min()) and high > max(1.0, table["speedup_ci_high"].max())
    (ring,) = [c for c in ax.collections if c.get_label() == "noisy cell"]
    np.testing.assert_allclose(ring.get_offsets()[:, 1], table[table["noise"] == "noisy"]["speedup"])
    near_one = table.assign(speedup=1.001, speedup_ci_low=0.999, speedup_ci_high=1.003)
    (flat,) = charts.speedup_chart(near_one, "llama3.2-1b", "prefill").axes
    assert flat.get_ylim()[1] - flat.get_ylim()[0] >= 0.1  # noise around 1.0 does not fill the axis


def test_compare_judges_paired_cells_on_their_speedups_not_a_busier_machine(tmp_path, capsys):
    """At head the whole machine ran 15% slower (stock too) and te/bf16 really lost 10% against stock."""
    base, head = fake_sha(3), fake_sha(4)
    write_commit(tmp_path, base, "2026-06-03T10:00:00+00:00", seed=23, paired=True)
    write_commit(tmp_path, head, "2026-06-04T10:00:00+00:00", seed=24, paired=True, machine_slowdown=1.15,
                 slow={("te", "bf16"): 1 / 0.9})
    table = compare_commits(bench_frame(load_frame(tmp_path)), base, head)
    verdicts = {(r.backend, r.precision, r.seq_len): (r.basis, r.verdict) for r in table.itertuples()}
    for seq_len in (512, 2048):
        assert verdicts[("te", "bf16", seq_len)] == ("paired speedup", "regressed")
        assert verdicts[("te", "fp8-delayed", seq_len)] == ("paired speedup", "no significant change")
        assert verdicts[("torch", "bf16", seq_len)] == ("paired speedup", "no significant change")
        assert verdicts[("stock", "bf16", seq_len)] == ("step time", "regressed")  # stock, alone, sees the machine
    te = table[(table["backend"] == "te") & (table["precision"] == "bf16")]
    assert ((te["throughput_change"] > -0.14) & (te["throughput_change"] < -0.06)).all()
    assert (te["base_n"] == 10).all() and (te["head_n"] == 10).all()  # rounds, not samples
    assert teswap(["compare", "--base", base[:8], "--head", head[:8], "--results", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "paired speedup" in out and "step time" in out and "×" in out

"""Commit order, per-commit history with regressions marked, and the charts' content."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from report_synthetic import fake_sha, git_repo, other_machine, write_commit
from teswap.reporting import charts
from teswap.reporting.commits import commit_order, resolve_revision
from teswap.reporting.errors import ReportError
from teswap.reporting.frame import ConfigKey, bench_frame, load_frame, parity_frame, select
from teswap.reporting.history import commits_table, histories, history_frame
from teswap.reporting.tables import comparison_table

TE_BF16_512 = dict(machine="nvidia-h200_gpu-1", model="llama3.2-1b", workload="prefill", backend="te",
                   precision="bf16", seq_len=512, batch=1, device="cuda")


@pytest.fixture(scope="module")
def history_store(tmp_path_factory):
    """Four commits of a git repo, measured out of order; te/bf16 is 10% slower from the third on."""
    root = tmp_path_factory.mktemp("history")
    shas = git_repo(root / "repo", 4)
    measured = ["2026-03-04T09:00:00+00:00", "2026-03-01T09:00:00+00:00", "2026-03-03T09:00:00+00:00",
                "2026-03-02T09:00:00+00:00"]  # record times disagree with commit order on purpose
    for index, (sha, when) in enumerate(zip(shas, measured, strict=True)):
        write_commit(root / "results", sha, when, seed=20 + index,
                     slow={("te", "bf16"): 1 / 0.9} if index >= 2 else {},
                     failing_parity=[("te", "fp8-delayed")] if index == 3 else [])
    return {"repo": root / "repo", "frame": load_frame(root / "results"), "shas": shas}


def test_commits_follow_git_commit_time_and_fall_back_to_record_time(history_store, tmp_path):
    frame, shas = history_store["frame"], history_store["shas"]
    assert commit_order(frame, history_store["repo"]) == shas
    by_record_time = [shas[1], shas[3], shas[2], shas[0]]
    assert commit_order(frame, tmp_path) == by_record_time  # tmp_path is no git repository
    assert resolve_revision("HEAD~3", frame, history_store["repo"]) == shas[0]
    table = commits_table(frame, history_store["repo"])
    assert table["sha"].tolist() == shas[::-1] and table["commit_time"].notna().all()
    assert table["parity_passed"].tolist() == [2, 3, 3, 3] and (table["parity_records"] == 3).all()


def test_history_marks_the_commit_that_regressed(history_store):
    bench = bench_frame(history_store["frame"])
    history = history_frame(bench, ConfigKey(**TE_BF16_512), repo=history_store["repo"])
    assert history["sha"].tolist() == history_store["shas"] and (history["n"] == 20).all()
    assert history["verdict"].tolist()[1:] == ["no significant change", "regressed", "no significant change"]
    assert -0.14 < history["change"][2] < -0.06
    recorded = select(bench, sha=history_store["shas"][0])
    recorded = recorded[ConfigKey(**TE_BF16_512).mask(recorded)]["metrics.tokens_per_s"].iloc[0]
    assert history["median"][0] == pytest.approx(recorded, rel=2e-3)
    assert (history["min"] <= history["q1"]).all() and (history["q3"] <= history["max"]).all()
    time_history = history_frame(bench, ConfigKey(**TE_BF16_512), "time_s", repo=history_store["repo"])
    assert time_history["verdict"][2] == "regressed" and 0.06 < time_history["change"][2] < 0.16
    with pytest.raises(ReportError, match="unknown history metric"):
        history_frame(bench, ConfigKey(**TE_BF16_512), "joules")


def test_histories_put_the_newest_regressions_first(history_store):
    found = histories(bench_frame(history_store["frame"]), repo=history_store["repo"])
    assert len(found) == 8
    regressed = [key for key, h in found if "regressed" in set(h["verdict"])]
    assert {(k.backend, k.precision) for k in regressed} == {("te", "bf16")}
    assert [key for key, _ in found[:2]] == regressed


def test_history_chart_shows_every_commit_and_marks_the_regression(history_store, tmp_path):
    key = ConfigKey(**TE_BF16_512)
    history = history_frame(bench_frame(history_store["frame"]), key, repo=history_store["repo"])
    figure = charts.history_chart(history, key)
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == [s[:7] for s in history_store["shas"]]
    marks = [t.get_text() for t in ax.texts]
    assert len(marks) == 1 and marks[0].startswith("▼ -")
    paths = charts.save_figure(figure, tmp_path, "history")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 10_000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in paths[1].read_bytes()[:500]


def test_result_charts_plot_the_table_values_and_ring_failed_parity(history_store):
    frame, newest = history_store["frame"], history_store["shas"][-1]
    table = comparison_table(select(bench_frame(frame), sha=newest), select(parity_frame(frame), sha=newest))
    (ax,) = charts.throughput_chart(table, "llama3.2-1b", "prefill").axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(line.get_label() for line in ax.get_lines()) == ["stock bf16", "te bf16", "te fp8-delayed",
                                                                    "torch bf16"]
    fp8 = table[table["precision"] == "fp8-delayed"].sort_values("seq_len")
    np.testing.assert_allclose(lines["te fp8-delayed"].get_ydata(), fp8["tokens_per_s"])
    np.testing.assert_allclose(lines["stock bf16"].get_ydata(), fp8["stock_tokens_per_s"])
    (ring,) = [c for c in ax.collections if c.get_label() == "parity failed"]
    np.testing.assert_allclose(ring.get_offsets()[:, 1], fp8["tokens_per_s"])
    (speed,) = charts.speedup_chart(table, "llama3.2-1b", "prefill").axes
    speedups = {line.get_label(): line.get_ydata() for line in speed.get_lines()}
    np.testing.assert_allclose(speedups["te fp8-delayed"], fp8["speedup"])
    memory, energy = charts.memory_energy_chart(table, "llama3.2-1b", "prefill").axes
    np.testing.assert_allclose(energy.get_lines()[-1].get_ydata(),
                               table[table["backend"] == "torch"].sort_values("seq_len")["energy_per_token_j"] * 1e3)
    mixed = pd.concat([table, table.assign(machine=other_machine().hostname)])
    with pytest.raises(ReportError, match="one machine at one commit"):
        charts.throughput_chart(mixed, "llama3.2-1b", "prefill")


def test_dirty_records_stay_out_of_history_unless_asked(tmp_path):
    for index in range(2):
        write_commit(tmp_path, fake_sha(index), f"2026-01-0{index + 1}T10:00:00+00:00", seed=index)
    write_commit(tmp_path, fake_sha(1), "2026-01-03T10:00:00+00:00", seed=5, dirty=True,
                 slow={("te", "bf16"): 2.0})
    bench = bench_frame(load_frame(tmp_path))
    clean = history_frame(bench, ConfigKey(**TE_BF16_512), repo=tmp_path)
    dirty = history_frame(bench, ConfigKey(**TE_BF16_512), repo=tmp_path, include_dirty=True)
    assert clean["n"].tolist() == [20, 20] and dirty["n"].tolist() == [20, 40]


def test_saved_charts_are_byte_identical_for_identical_input(tmp_path):
    """A re-rendered committed report must not show up as a change in git."""
    import matplotlib.pyplot as plt

    from teswap.reporting.charts import save_figure

    def render(directory):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [3, 1, 2], label="line")
        ax.legend()
        paths = save_figure(fig, directory, "chart")
        plt.close(fig)
        return [p.read_bytes() for p in paths]

    assert render(tmp_path / "a") == render(tmp_path / "b")

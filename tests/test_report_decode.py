"""Reports of decode cells: TTFT, TPOT, ITL and tokens/s stock beside swapped, the paired ratios with their
CIs, the HF -> TE -> +graphs -> +FP8 weights ladder, skips with their reasons, and the decode charts.

The records come from report_synthetic.write_decode_commit: token marks on a synthetic clock turned into
metrics and paired ratios by the real decode_metrics and statistics, so every figure a test reads back
was computed from samples, never echoed."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from report_synthetic import fake_sha, teswap, write_commit, write_decode_commit
from teswap.reporting import charts, decode_charts, display, formats
from teswap.reporting.decode import decode_table
from teswap.reporting.frame import bench_frame, load_frame, parity_frame
from teswap.reporting.github_action_benchmark import gab_entries
from teswap.reporting.publish import render, sections, write_charts, write_tables

SHA = fake_sha(7)
MODEL = "llama3.2-1b"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One commit on an H200: a prefill run and a decode run (the ladder at prompts 128, 512 x batch 1, 8)."""
    root = tmp_path_factory.mktemp("decode")
    write_commit(root, SHA, "2026-05-01T10:00:00+00:00", seed=3, seq_lens=(512,))
    write_decode_commit(root, SHA, "2026-05-01T11:00:00+00:00", seed=4, seq_lens=(128, 512), batches=(1, 8),
                        new_tokens=16)
    return root


@pytest.fixture(scope="module")
def records(store):
    return [json.loads(line) for path in store.glob("*/*.jsonl") for line in path.read_text().splitlines()
            if json.loads(line)["kind"] == "bench" and json.loads(line)["cell"]["workload"] == "decode"]


@pytest.fixture(scope="module")
def table(store):
    frame = load_frame(store)
    return decode_table(bench_frame(frame), parity_frame(frame))


def _row(table, backend, precision, options, seq_len, batch):
    match = table[(table["backend"] == backend) & (table["precision"] == precision) & (table["options"] == options)
                  & (table["seq_len"] == seq_len) & (table["batch"] == batch)]
    assert len(match) == 1
    return match.iloc[0]


def _record(records, backend, precision, options, seq_len, batch):
    return next(r for r in records if (r["cell"]["backend"], r["cell"]["precision"], r["cell"]["options"],
                                       r["cell"]["seq_len"], r["cell"]["batch"]) ==
                (backend, precision, options, seq_len, batch))


def test_every_decode_cell_is_a_row_with_its_records_metrics(table, records):
    assert len(table) == len(records) == 2 * 2 * 5
    for record in records:
        cell = record["cell"]
        row = _row(table, cell["backend"], cell["precision"], cell["options"], cell["seq_len"], cell["batch"])
        assert row["new_tokens"] == 16 and row["status"] == record["status"]
        for name in ("ttft_s", "tpot_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "decode_tokens_per_s",
                     "e2e_tokens_per_s", "energy_per_output_token_j"):
            expected = record["metrics"].get(name, np.nan) if record["status"] == "ok" else np.nan
            np.testing.assert_allclose(row[name], expected, err_msg=name)


def test_swapped_rows_carry_the_paired_ttft_tpot_and_e2e_ratios_with_their_cis(table, records):
    for options in ("", "cuda-graphs"):
        row = _row(table, "te", "bf16", options, 512, 8)
        paired = _record(records, "te", "bf16", options, 512, 8)["paired"]
        assert paired["baseline"]["options"] == options  # graphs are paired with stock's graphs
        for phase in ("ttft", "tpot"):
            own = paired["phases"][f"{phase}_s"]
            assert (row[f"{phase}_ratio"], row[f"{phase}_ci_low"], row[f"{phase}_ci_high"]) == (
                own["ratio"], own["ci_low"], own["ci_high"])
            assert row[f"{phase}_ci_low"] <= row[f"{phase}_ratio"] <= row[f"{phase}_ci_high"]
        assert (row["speedup"], row["speedup_basis"]) == (paired["speedup"], "paired")
        for phase in ("ttft", "tpot"):  # stock's medians in the same rounds, what the ratios compare against
            stock_samples = [s for block in paired["phases"][f"{phase}_s"]["baseline_samples"] for s in block]
            assert row[f"stock_{phase}_s"] == pytest.approx(float(np.median(stock_samples)))
    stock = _row(table, "stock", "bf16", "", 512, 8)
    assert np.isnan(stock["ttft_ratio"]) and np.isnan(stock["speedup"]) and stock["parity"] == "stock"
    assert np.isnan(stock["stock_ttft_s"])


def test_vs_hf_reads_the_ladder_against_plain_stock_of_the_same_shape(table):
    plain = _row(table, "stock", "bf16", "", 128, 8)["e2e_tokens_per_s"]
    ladder = [("stock", "bf16", ""), ("te", "bf16", ""), ("te", "bf16", "cuda-graphs"),
              ("te", "fp8-delayed", "cuda-graphs+fp8-weights")]
    rungs = [_row(table, *variant, 128, 8) for variant in ladder]
    for rung in rungs:
        assert rung["vs_hf"] == pytest.approx(rung["e2e_tokens_per_s"] / plain)
    assert [r["vs_hf"] for r in rungs] == sorted(r["vs_hf"] for r in rungs)  # each rung faster in this data
    shown = display.decode_results_table(table)
    column = list(shown.headers).index("vs HF")
    texts = [shown.rows[list(table.index).index(rung.name)][column].text for rung in rungs]
    assert texts[0] == "1.00×" and all(t.endswith(display.UNPAIRED) for t in texts[1:])  # two cells: unpaired


def test_a_skipped_cell_shows_its_status_and_reason(table):
    row = _row(table, "te", "fp8-delayed", "cuda-graphs+fp8-weights", 128, 1)
    assert row["status"] == "skipped" and "multiple of 8" in row["reason"] and np.isnan(row["ttft_s"])
    shown = display.decode_results_table(table)
    index = list(table.index).index(row.name)
    texts = [cell.text for cell in shown.rows[index]]
    headers = list(shown.headers)
    assert texts[headers.index("TTFT ms")] == "SKIPPED" and texts[headers.index("TPOT ms")] == display.MISSING
    assert "multiple of 8" in texts[headers.index("reason")]


def test_the_published_decode_table_prints_milliseconds_and_intervals(table):
    shown = display.decode_results_table(table)
    headers = list(shown.headers)
    row = _row(table, "te", "bf16", "cuda-graphs", 512, 1)
    texts = [cell.text for cell in shown.rows[list(table.index).index(row.name)]]
    assert texts[headers.index("variant")] == "te+cuda-graphs bf16"
    assert texts[headers.index("TTFT ms")] == display.milliseconds(row["ttft_s"])
    assert texts[headers.index("stock TTFT / TPOT ms, same rounds")] == (
        f"{display.milliseconds(row['stock_ttft_s'])} / {display.milliseconds(row['stock_tpot_s'])}")
    assert texts[headers.index("TPOT vs stock")] == (f"{row['tpot_ratio']:.2f}× [{row['tpot_ci_low']:.2f}, "
                                                     f"{row['tpot_ci_high']:.2f}]")
    assert texts[headers.index("decode tok/s")] == f"{row['decode_tokens_per_s']:,.0f}"


def test_report_renders_the_decode_table_in_every_format_and_writes_its_csv(store, table, tmp_path):
    parts = sections(load_frame(store))
    markdown, html = render(parts, "md"), render(parts, "html")
    assert "### Decode" in markdown and markdown.count("| llama3.2-1b | 512 | 16 | 8 |") == 5
    assert html.count('<table class="decode">') == 1 and "TPOT vs stock" in html
    assert "decode, stock beside swapped" in render(parts, "tex")
    paths = write_tables(parts, tmp_path)
    decode_csv = next(p for p in paths if p.name == "results-decode.csv")
    parsed = pd.read_csv(io.StringIO(decode_csv.read_text()))
    np.testing.assert_allclose(parsed["tpot_s"].to_numpy(), table["tpot_s"].to_numpy(dtype=float))


def test_a_store_without_decode_cells_has_no_decode_section(tmp_path):
    write_commit(tmp_path, SHA, "2026-05-01T10:00:00+00:00", seed=3, seq_lens=(512,))
    (part,) = sections(load_frame(tmp_path))
    assert part.decode.empty and "Decode" not in render([part], "md")
    assert not any(p.name.endswith("-decode.csv") for p in write_tables([part], tmp_path / "out"))


def test_latency_chart_draws_ttft_and_tpot_against_prompt_length_per_variant_and_batch(table):
    ttft_ax, tpot_ax = decode_charts.decode_latency_chart(table, MODEL, 16).axes
    ok = table[table["status"] == "ok"]
    for ax, column in ((ttft_ax, "ttft_s"), (tpot_ax, "tpot_s")):
        drawn = sorted(round(float(y), 9) for line in ax.get_lines() for y in line.get_ydata())
        assert drawn == sorted(round(float(v) * 1e3, 9) for v in ok[column])
        assert {float(x) for line in ax.get_lines() for x in line.get_xdata()} == {128.0, 512.0}


def test_speedup_chart_draws_each_ratio_with_its_interval_around_one(table):
    for ax, phase in zip(decode_charts.decode_speedup_chart(table, MODEL, 16).axes, ("ttft", "tpot"), strict=True):
        swapped = table[(table["backend"] != "stock") & table[f"{phase}_ratio"].notna()]
        bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
        drawn = sorted(round(float(y), 9) for bar in bars for segment in bar.get_segments() for y in segment[:, 1])
        assert drawn == sorted(round(float(y), 9) for y in (*swapped[f"{phase}_ci_low"], *swapped[f"{phase}_ci_high"]))
        low, high = ax.get_ylim()
        assert low < 1.0 < high and high > swapped[f"{phase}_ci_high"].max()


def test_throughput_chart_draws_decode_tokens_per_second_against_batch(table):
    (ax,) = decode_charts.decode_throughput_chart(table, MODEL, 16).axes
    drawn = sorted((float(x), round(float(y), 6)) for line in ax.get_lines()
                   for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True))
    ok = table[table["status"] == "ok"]
    assert drawn == sorted((float(b), round(float(v), 6)) for b, v in zip(ok["batch"], ok["decode_tokens_per_s"],
                                                                          strict=True))


def test_write_charts_gives_decode_its_own_charts_and_the_generic_ones_to_prefill(store, tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "save_figure", lambda figure, folder, stem: [folder / f"{stem}.png"])  # no files
    (part,) = sections(load_frame(store))
    captions = [caption for caption, _ in write_charts(part, tmp_path)]
    assert [c for c in captions if "decode" in c] == [
        f"{MODEL} decode (16 new tokens): TTFT and TPOT vs prompt length",
        f"{MODEL} decode (16 new tokens): TTFT and TPOT speedups with CIs",
        f"{MODEL} decode (16 new tokens): decode tokens/s vs batch"]
    assert len(captions) == 6  # and prefill's throughput, speedup, memory/energy


def test_dashboard_entries_name_each_decode_variant_apart(store):
    frame = load_frame(store)
    bench = bench_frame(frame)
    entries = gab_entries(bench, parity_frame(frame))
    names = [entry["name"] for entry in entries["customBiggerIsBetter"]]
    assert len(names) == len(set(names))
    assert f"{MODEL} decode seq=512 new=16 batch=8 te/bf16+cuda-graphs throughput" in names
    assert any(entry["name"].endswith("TPOT") for entry in entries["customSmallerIsBetter"])


def test_report_cli_prints_the_decode_table(store, capsys):
    assert teswap(["report", "--results", str(store)]) == 0
    out = capsys.readouterr().out
    assert "### Decode" in out and "te+cuda-graphs+fp8-weights fp8-delayed" in out
    frame = load_frame(store)
    published = display.decode_results_table(decode_table(bench_frame(frame), parity_frame(frame)))
    assert formats.to_markdown(published) in out


def test_milliseconds_keep_three_digits_without_an_exponent():
    assert [display.milliseconds(v) for v in (0.00231, 0.0782, 0.157, 2.4812)] == ["2.31", "78.2", "157", "2,481"]
    assert display.milliseconds(None) == display.MISSING

"""Published tables: figures beside the stock baseline, parity verdicts and flags, all four formats."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest

from report_synthetic import bench_fields, fake_sha, teswap, write_commit
from teswap.precision.table import PRECISIONS, baseline_precision
from teswap.reporting import display, formats
from teswap.reporting.frame import bench_frame, load_frame, parity_frame, select
from teswap.reporting.publish import render, sections
from teswap.reporting.tables import comparison_table, parity_table
from teswap.store.runs import open_run

VARIANTS = (("stock", "bf16"), ("stock", "fp32"), ("te", "bf16"), ("te", "fp8-delayed"), ("torch", "fp32"))
OLD, NEW = fake_sha(1), fake_sha(2)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two commits; at NEW te/fp8-delayed fails parity, torch/fp32 has no parity run and te/bf16 OOMs at 2048."""
    root = tmp_path_factory.mktemp("tables")
    write_commit(root, OLD, "2026-01-01T10:00:00+00:00", seed=1, variants=VARIANTS)
    path = write_commit(root, NEW, "2026-01-02T10:00:00+00:00", seed=2, variants=VARIANTS,
                        failing_parity=[("te", "fp8-delayed")], oom=[("te", "bf16", 2048)])
    kept = [line for line in path.read_text().splitlines()
            if not (json.loads(line)["kind"] == "parity" and json.loads(line)["case"]["backend"] == "torch")]
    path.write_text("\n".join(kept) + "\n")
    return root


@pytest.fixture(scope="module")
def records(store):
    return [json.loads(line) for path in store.glob("*/*.jsonl") for line in path.read_text().splitlines()]


def _bench(records, sha, backend, precision, seq_len):
    return next(r for r in records if r["kind"] == "bench" and r["provenance"]["git"]["sha"] == sha
                and r["cell"]["backend"] == backend and r["cell"]["precision"] == precision
                and r["cell"]["seq_len"] == seq_len)


@pytest.fixture(scope="module")
def table(store):
    frame = load_frame(store)
    return comparison_table(select(bench_frame(frame), sha=NEW), select(parity_frame(frame), sha=NEW))


def test_baseline_is_the_stock_model_at_the_swapped_precisions_model_dtype():
    names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
    for name, precision in PRECISIONS.items():
        assert baseline_precision(name) == names[str(precision.model_dtype)], name


def test_speedup_memory_and_energy_are_against_the_right_stock_cell(table, records):
    rows = table.set_index(["backend", "precision", "seq_len"])
    for (backend, precision, seq_len), stock_precision in [(("te", "fp8-delayed", 2048), "bf16"),
                                                           (("torch", "fp32", 512), "fp32"),
                                                           (("te", "bf16", 512), "bf16")]:
        swapped = _bench(records, NEW, backend, precision, seq_len)["metrics"]
        stock = _bench(records, NEW, "stock", stock_precision, seq_len)["metrics"]
        row = rows.loc[(backend, precision, seq_len)]
        assert row["stock_precision"] == stock_precision
        assert row["speedup"] == pytest.approx(swapped["tokens_per_s"] / stock["tokens_per_s"])
        assert row["peak_memory_change"] == pytest.approx(
            swapped["peak_allocated_bytes"] / stock["peak_allocated_bytes"] - 1)
        assert row["stock_energy_per_token_j"] == pytest.approx(stock["energy_per_token_j"])
        assert row["mfu_vs_precision_peak"] == pytest.approx(swapped["mfu_vs_precision_peak"])
    assert set(table["backend"]) == {"te", "torch"} and len(table) == 6


def test_parity_verdict_sits_beside_every_figure_and_failures_are_flagged(table):
    verdicts = {(r.backend, r.precision): (r.parity, r.flagged) for r in table.itertuples()}
    assert verdicts[("te", "fp8-delayed")] == ("failed", True)
    assert verdicts[("te", "bf16")] == ("passed", False)
    assert verdicts[("torch", "fp32")] == ("untested", False)  # its only parity run was at another commit
    oom = table[(table["backend"] == "te") & (table["precision"] == "bf16") & (table["seq_len"] == 2048)].iloc[0]
    assert oom["status"] == "oom" and pd.isna(oom["tokens_per_s"]) and pd.isna(oom["speedup"])


def test_markdown_and_html_mark_the_flagged_figures(table):
    shown = display.results_table(table)
    markdown = formats.to_markdown(shown)
    fp8_rows = [line for line in markdown.splitlines() if "| fp8-delayed |" in line]
    assert len(fp8_rows) == 2 and all(line.count("**⚠ ") == 3 for line in fp8_rows)
    clean_rows = [line for line in markdown.splitlines() if line.startswith("| llama") and "fp8" not in line]
    assert clean_rows and not any("⚠" in line for line in clean_rows)
    assert "| OOM | OOM |" in markdown and "⚠ parity failed" in markdown
    page = formats.to_html(shown)
    assert page.count('class="flag num"') == 4 and page.count('<td class="flag">') == 2
    assert page.count("<tr>") == len(table) + 1


def test_latex_is_escaped_and_daggers_the_flags(table):
    tex = formats.to_latex(display.results_table(table), caption="nvidia-h200_gpu-1 @ 02c0ffe, 100% synthetic")
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    assert body.count(r"$^\dagger$") == 6 and "⚠" not in tex
    cells = [cell for line in body.strip().splitlines() for cell in line.removesuffix(r" \\").split(" & ")]
    assert len(cells) == 15 * len(table)
    assert not [cell for cell in cells if re.search(r"(?<!\\)[_%&#]", cell)], "unescaped LaTeX special character"
    assert r"nvidia-h200\_gpu-1" in tex and r"100\% synthetic" in tex and r"$\times$" in body
    assert tex.count(r"\\") == len(table) + 1


def test_csv_round_trips_the_numbers(table):
    parsed = pd.read_csv(io.StringIO(render(sections_of(table), "csv")))
    assert list(parsed.columns) == list(table.columns)
    pd.testing.assert_series_equal(parsed["speedup"], table["speedup"], check_names=False, rtol=1e-12)
    assert parsed["flagged"].tolist() == table["flagged"].tolist()


def sections_of(table):
    from teswap.reporting.publish import Section

    return [Section(machine="m", sha=NEW, records=pd.DataFrame(), table=table, footer=[])]


def test_sections_default_to_the_newest_commit_and_carry_a_provenance_footer(store):
    frame = load_frame(store)
    (part,) = sections(frame)
    assert part.sha == NEW and set(part.table["commit"]) == {NEW[:7]}
    footer = "\n".join(part.footer)
    for fact in ("NVIDIA H200", "driver 570.86.15", "CUDA 12.8", "compute capability 9.0", "torch 2.11.0+cu128",
                 "transformers 5.17.0", "transformer_engine 2.8.0", "teswap 0.1.0", NEW[:7], "2026-01-02 10:00"):
        assert fact in footer, fact
    (old,) = sections(frame, sha=OLD)
    assert set(old.table["parity"]) == {"passed"} and not old.table["flagged"].any()


def test_report_cli_writes_every_format_and_charts(store, tmp_path, capsys):
    assert teswap(["report", "--results", str(store)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"## nvidia-h200_gpu-1 @ {NEW[:7]}") and "Libraries: Python 3.12.3" in out
    assert teswap(["report", "--results", str(store), "--commit", OLD[:9], "--format", "tex"]) == 0
    assert rf"@ {OLD[:7]}" in capsys.readouterr().out
    assert teswap(["report", "--results", str(store), "--out", str(tmp_path)]) == 0
    for suffix in ("md", "html", "csv", "tex"):
        assert (tmp_path / f"results.{suffix}").stat().st_size > 500
    charts = sorted(p.name for p in (tmp_path / "charts" / "nvidia-h200_gpu-1").iterdir())
    assert len(charts) == 6 and all(name.startswith(NEW[:7]) for name in charts)
    assert {p.rsplit(".", 1)[1] for p in charts} == {"png", "svg"}


def test_parity_table_lists_cases_with_policy_and_divergent_layer(store):
    parity = parity_table(select(parity_frame(load_frame(store)), sha=NEW))
    failed = parity[parity["status"] == "failed"].iloc[0]
    assert failed["precision"] == "fp8-delayed" and failed["first_divergent_layer"] == 3
    assert failed["policy"] == "fp8 v1"
    assert "⚠ failed" in formats.to_markdown(display.parity_cases_table(parity))


def test_ranks_of_a_torchrun_launch_merge_and_device_index_does_not_hide_parity(tmp_path):
    from report_synthetic import bench_fields, parity_fields, provenance
    from teswap.store.ranks import RankInfo

    rng = np.random.default_rng(3)
    sha = fake_sha(7)
    per_rank = {}
    for rank in range(2):
        info = RankInfo(rank=rank, world_size=2, local_rank=rank, run_id="launch-1")
        writer = open_run(tmp_path, provenance(sha, "2026-05-01T10:00:00+00:00"), rank=info)
        for backend, precision in (("stock", "bf16"), ("te", "bf16")):
            fields = bench_fields(rng, "llama3-8b", "train", backend, precision, 4096)
            writer.append("bench", fields)
            per_rank[(backend, rank)] = {**fields["metrics"], "median_s": fields["stats"]["median_s"]}
        if rank == 0:
            writer.append("parity", parity_fields("llama3-8b", "te", "bf16", 512, passed=False))
    frame = load_frame(tmp_path)
    (row,) = comparison_table(bench_frame(frame), parity_frame(frame)).itertuples()

    def launch_rate(backend: str) -> float:  # all tokens (rank 0's per step x 2 ranks) / the slowest rank's time
        ranks = [per_rank[(backend, r)] for r in range(2)]
        return ranks[0]["tokens_per_s"] * ranks[0]["median_s"] * 2 / max(m["median_s"] for m in ranks)

    total, stock = launch_rate("te"), launch_rate("stock")
    assert row.tokens_per_s == pytest.approx(total) and row.speedup == pytest.approx(total / stock)
    assert row.peak_allocated_bytes == max(per_rank[("te", r)]["peak_allocated_bytes"] for r in range(2))
    assert row.parity == "failed" and row.flagged


def test_a_sharded_speed_takes_only_the_verdict_of_its_own_plan(tmp_path):
    """A tensor-parallel launch's speed stands beside the tp check's verdict; a whole-model check (one process or
    replicas) says nothing of the shards, nor a tp check on 4 ranks of a 2-rank speed's, and a failed tp check
    does not mark the one-process speed."""
    from report_synthetic import bench_fields, parity_fields, provenance
    from teswap.store.ranks import RankInfo

    rng = np.random.default_rng(6)
    sha, when = fake_sha(10), "2026-05-03T10:00:00+00:00"
    single = open_run(tmp_path, provenance(sha, when))
    for backend in ("stock", "te"):
        single.append("bench", bench_fields(rng, "llama3-8b", "prefill", backend, "bf16", 1024))
    single.append("parity", parity_fields("llama3-8b", "te", "bf16", 512, passed=True))  # checked whole
    for rank in range(2):
        writer = open_run(tmp_path, provenance(sha, when), rank=RankInfo(rank=rank, world_size=2, local_rank=rank,
                                                                         run_id="tp-launch"))
        for backend in ("stock", "te"):
            fields = bench_fields(rng, "llama3-8b", "prefill", backend, "bf16", 1024)
            writer.append("bench", {**fields, "distributed": {"plan": "tp", "world_size": 2, "dp_size": 1,
                                                              "tp_size": 2}})
    frame = load_frame(tmp_path)
    by_plan = comparison_table(bench_frame(frame), parity_frame(frame)).set_index("plan", drop=False)
    assert by_plan.loc["tp", "parity"] == "untested"  # the whole-model verdict does not stand for the shards
    assert by_plan.loc[by_plan["plan"].isna()].iloc[0]["parity"] == "passed"
    tp_case = parity_fields("llama3-8b", "te", "bf16", 512, passed=False)
    writer.append("parity", {**tp_case, "case": {**tp_case["case"], "parallel": "tp", "world_size": 2}})
    wider = parity_fields("llama3-8b", "te", "bf16", 512, passed=True)  # tp 4 cuts other shards: not this speed's
    writer.append("parity", {**wider, "case": {**wider["case"], "parallel": "tp", "world_size": 4}})
    frame = load_frame(tmp_path)
    table = comparison_table(bench_frame(frame), parity_frame(frame))
    tp, whole = table[table["plan"] == "tp"].iloc[0], table[table["plan"].isna()].iloc[0]
    assert (tp["parity"], tp["parity_cases"], bool(tp["flagged"])) == ("failed", "0/1", True)
    assert (whole["parity"], whole["parity_cases"]) == ("passed", "1/1")
    shown = formats.to_markdown(display.parity_cases_table(parity_table(parity_frame(frame))))
    assert "te (tp ×2)" in shown


def test_parity_on_cuda_matches_bench_cells_on_cuda_0(tmp_path):
    from report_synthetic import bench_fields, parity_fields, provenance

    rng = np.random.default_rng(4)
    writer = open_run(tmp_path, provenance(fake_sha(8), "2026-05-02T10:00:00+00:00"))
    for backend in ("stock", "te"):
        fields = bench_fields(rng, "llama3.2-1b", "prefill", backend, "bf16", 1024)
        fields["cell"]["device"] = "cuda:0"
        writer.append("bench", fields)
    writer.append("parity", parity_fields("llama3.2-1b", "te", "bf16", 512, passed=False))
    frame = load_frame(tmp_path)
    (row,) = comparison_table(bench_frame(frame), parity_frame(frame)).itertuples()
    assert row.device == "cuda:0" and row.parity == "failed" and row.flagged


def test_a_verdict_from_a_stand_in_case_is_marked_and_a_models_own_verdict_wins(tmp_path):
    """teswap run checks llama3.2-1b in llama3-8b's place where the 8B case does not fit: its verdict stands
    beside the 8B figures, marked as borrowed; a case on the 8B itself would take precedence."""
    from report_synthetic import bench_fields, parity_fields, provenance

    rng = np.random.default_rng(5)
    writer = open_run(tmp_path, provenance(fake_sha(9), "2026-05-02T10:00:00+00:00"))
    for backend, precision in (("stock", "bf16"), ("te", "bf16"), ("te", "fp8-delayed")):
        writer.append("bench", bench_fields(rng, "llama3-8b", "prefill", backend, precision, 1024))
    for precision, passed in (("bf16", True), ("fp8-delayed", False)):
        stand_in = parity_fields("llama3.2-1b", "te", precision, 2048, passed=passed)
        writer.append("parity", {**stand_in, "case": {**stand_in["case"], "stands_for": "llama3-8b"}})
    frame = load_frame(tmp_path)
    table = comparison_table(bench_frame(frame), parity_frame(frame)).set_index("precision")
    assert table.loc["bf16", "parity"] == "passed" and table.loc["bf16", "parity_model"] == "llama3.2-1b"
    assert table.loc["fp8-delayed", "parity"] == "failed" and table.loc["fp8-delayed", "flagged"]
    shown = formats.to_markdown(display.results_table(table.reset_index()))
    assert "passed 1/1 (on llama3.2-1b)" in shown and "checked in this model's place" in shown
    writer.append("parity", parity_fields("llama3-8b", "te", "bf16", 512, passed=False))  # the 8B's own case
    frame = load_frame(tmp_path)
    own = comparison_table(bench_frame(frame), parity_frame(frame)).set_index("precision").loc["bf16"]
    assert (own["parity"], own["parity_model"]) == ("failed", "llama3-8b")


def test_records_from_outside_git_are_reported_as_nogit(tmp_path, capsys):
    write_commit(tmp_path, None, "2026-05-03T10:00:00+00:00", seed=5, failing_parity=[("te", "fp8-delayed")])
    (part,) = sections(load_frame(tmp_path))
    assert part.title == "nvidia-h200_gpu-1 @ nogit" and len(part.table) == 6
    assert part.table["stock_tokens_per_s"].notna().all() and part.table["flagged"].sum() == 2
    assert teswap(["report", "--results", str(tmp_path)]) == 0
    assert "@ nogit" in capsys.readouterr().out


def test_published_parity_shows_both_models_errors_perplexity_greedy_and_both_verdicts(tmp_path):
    """A real (tiny) parity case, stored and published in every format."""
    from teswap.parity.case import ParityCase, run_parity_case
    from teswap.reporting.publish import render_parity_csv
    from teswap.store.provenance import capture_provenance

    report = run_parity_case(ParityCase(source="tiny", precision="bf16", seq_len=32, batches=1, gen_prompts=16,
                                        gen_tokens=3, grads=False))
    writer = open_run(tmp_path, capture_provenance())
    writer.write(report.record())
    bench = bench_fields(np.random.default_rng(0), "llama3.2-1b", "prefill", "stock", "bf16", 32)
    writer.append("bench", bench | {"cell": {**bench["cell"], "model": "tiny", "device": "cpu"}})
    table = parity_table(parity_frame(load_frame(tmp_path)))
    (row,) = table.itertuples()
    assert row.status == "passed" and row.precision_verdict == "fit" and row.policy == "bf16 v2"
    assert row.swapped_rel_rms == pytest.approx(report.swapped["rel_rms"])
    assert row.stock_perplexity == pytest.approx(report.perplexity["stock"])
    assert row.greedy_new_tokens == 3 and row.greedy_prompts == 16
    shown = formats.to_markdown(display.parity_cases_table(table))
    assert f"{report.swapped['rel_rms']:.2e} / {report.stock['rel_rms']:.2e}" in shown and "of 3" in shown
    parts = sections(load_frame(tmp_path))
    for fmt in ("md", "html", "tex"):
        assert "perplexity" in render(parts, fmt)
    assert "swapped_rel_rms" in render_parity_csv(parts).splitlines()[0]

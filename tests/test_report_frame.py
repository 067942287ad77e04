"""The DataFrame loader: flattening, derived columns, clear errors, --skip-bad, concurrent and killed writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from report_synthetic import bench_fields, fake_sha, provenance, teswap, write_commit
from teswap.reporting.errors import ReportError
from teswap.reporting.frame import ConfigKey, bench_frame, config_keys, load_frame, parity_frame, select
from teswap.store.runs import StoreError, open_run


def _lines(root) -> list[dict]:
    return [json.loads(line) for path in sorted(root.glob("*/*.jsonl")) for line in path.read_text().splitlines()]


def test_records_flatten_into_dotted_columns_with_derived_ones(tmp_path):
    clean = write_commit(tmp_path, fake_sha(1), "2026-01-01T10:00:00+00:00", seed=1)
    write_commit(tmp_path, fake_sha(2), "2026-01-02T10:00:00+00:00", seed=2, dirty=True)
    frame = load_frame(tmp_path)
    records = _lines(tmp_path)
    assert len(frame) == len(records)
    bench, parity = bench_frame(frame), parity_frame(frame)
    assert len(bench) == sum(r["kind"] == "bench" for r in records) and len(parity) == len(frame) - len(bench)
    first = records[0]
    row = frame[frame["run_id"] == first["run_id"]].iloc[0]
    assert row["cell.model"] == first["cell"]["model"]
    assert row["provenance.git.sha"] == first["provenance"]["git"]["sha"]
    assert row["stats.samples_s"] == first["stats"]["samples_s"]  # lists stay one cell
    assert row["provenance.machine.gpu_name"] == "NVIDIA H200" and row["machine"] == clean.parent.name
    assert row["source"] == f"{clean.parent.name}/{clean.name}"
    assert set(frame["commit"]) == {fake_sha(1)[:7], fake_sha(2)[:7] + "-dirty"}
    assert bench["cell.seq_len"].dtype.kind == "i" and parity["case.seed"].dtype.kind == "i"
    assert len(select(bench, sha=fake_sha(2)[:10])) == len(select(bench, sha=fake_sha(2), include_dirty=True)) == 8
    assert select(bench, sha=fake_sha(2), include_dirty=False).empty


def test_config_keys_name_each_cell_per_machine(tmp_path):
    write_commit(tmp_path, fake_sha(1), "2026-01-01T10:00:00+00:00", seed=1, seq_lens=(256, 1024))
    bench = bench_frame(load_frame(tmp_path))
    keys = config_keys(bench)
    assert len(keys) == 8 and [k.seq_len for k in keys[:2]] == [256, 1024]
    key = ConfigKey(machine="nvidia-h200_gpu-1", model="llama3.2-1b", workload="prefill", backend="te",
                    precision="bf16", seq_len=1024, batch=1, device="cuda")
    assert key in keys and key.mask(bench).sum() == 1
    assert key.label() == "llama3.2-1b prefill seq=1024 batch=1 te/bf16 cuda" and "/" not in key.slug()


def test_missing_and_empty_stores_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ReportError, match="does not exist"):
        load_frame(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="empty"):
        load_frame(tmp_path)
    assert teswap(["report", "--results", str(tmp_path / "nowhere")]) == 2
    assert teswap(["report", "--results", str(tmp_path)]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse errors exit from inside parse_args
        teswap(["report", "--results", str(tmp_path), "--format", "xlsx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("teswap: error: ") for line in err)
    assert "does not exist" in err[0] and "empty" in err[1] and "invalid choice: 'xlsx'" in err[2]


def test_a_torn_last_line_is_reported_with_a_warning_a_corrupt_one_is_an_error(tmp_path, capsys):
    path = write_commit(tmp_path, fake_sha(1), "2026-01-01T10:00:00+00:00", seed=1)
    total = len(path.read_text().splitlines())
    with open(path, "a") as handle:
        handle.write('{"schema_version": 1, "kind": "bench", "cell": {"mod')  # a writer killed mid-line
    out = tmp_path.parent / "report"
    assert teswap(["report", "--results", str(tmp_path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("teswap: warning: ") and f"{path.name}:{total + 1}" in err and "torn last line" in err
    published = (out / "results.md").read_text()
    assert "| llama3.2-1b |" in published and f"{path.name}:{total + 1}" in published  # named in the report
    with open(path, "a") as handle:  # more lines after it: now a corrupt line in the middle of the file
        handle.write("\n" + path.read_text().splitlines()[0] + "\n")
    with pytest.raises(StoreError, match=rf"{path.name}:{total + 1}: unreadable record"):
        load_frame(tmp_path)
    assert teswap(["report", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path.name}:{total + 1}" in err and "--skip-bad" in err
    assert teswap(["report", "--results", str(tmp_path), "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("teswap: warning: ") and "skipped" in captured.err
    assert "| llama3.2-1b |" in captured.out and f"{path.name}:{total + 1}" in captured.out
    with pytest.warns(UserWarning, match="skipped"):
        assert len(load_frame(tmp_path, skip_bad=True)) == total + 1


def test_records_from_a_newer_teswap_are_refused_by_line(tmp_path):
    path = write_commit(tmp_path, fake_sha(1), "2026-01-01T10:00:00+00:00", seed=1)
    record = json.loads(path.read_text().splitlines()[0])
    with open(path, "a") as handle:
        handle.write(json.dumps({**record, "schema_version": 99}) + "\n")
    with pytest.raises(StoreError, match="newer than this teswap reads"):
        load_frame(tmp_path)


def _writer(root, sha, count, pause_s):
    writer = open_run(root, provenance(sha, "2026-01-01T10:00:00+00:00"))
    rng = np.random.default_rng(int(sha[:2], 16))
    for i in range(count):
        writer.append("bench", bench_fields(rng, "llama3.2-1b", "prefill", "te", "bf16", 128 * (i + 1)))
        time.sleep(pause_s)


def test_concurrent_writers_and_a_killed_one_leave_a_loadable_store(tmp_path):
    ctx = multiprocessing.get_context("fork")
    steady = [ctx.Process(target=_writer, args=(tmp_path, fake_sha(i), 60, 0.0)) for i in (1, 2)]
    doomed = ctx.Process(target=_writer, args=(tmp_path, fake_sha(3), 100_000, 0.001))
    for process in (*steady, doomed):
        process.start()
    for process in steady:
        process.join(60)
    deadline = time.monotonic() + 20
    while len(list(tmp_path.glob(f"*/*{fake_sha(3)[:7]}*"))) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join()
    (killed,) = tmp_path.glob(f"*/*{fake_sha(3)[:7]}*")
    with open(killed, "a") as handle:  # what a kill in the middle of a write would leave
        handle.write('{"schema_version": 1, "kind": "bench", "cel')
    with pytest.warns(UserWarning, match="torn last line"):
        bench = bench_frame(load_frame(tmp_path))
    for sha in (fake_sha(1), fake_sha(2)):
        assert sorted(select(bench, sha=sha)["cell.seq_len"]) == [128 * (i + 1) for i in range(60)]
    survived = select(bench, sha=fake_sha(3))["cell.seq_len"].tolist()
    assert len(survived) > 0 and survived == [128 * (i + 1) for i in range(len(survived))]

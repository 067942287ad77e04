"""The results store: append-only, durable per record, concurrent writers, clear errors on bad lines."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from dataclasses import replace

import pytest

from teswap.store.provenance import capture_provenance
from teswap.store.runs import (
    SCHEMA_VERSION,
    StoreError,
    TornRecordWarning,
    load_records,
    migrate,
    open_run,
    read_records,
)


@pytest.fixture(scope="module")
def provenance():
    return capture_provenance()


def test_records_carry_schema_kind_run_and_provenance(tmp_path, provenance):
    writer = open_run(tmp_path, provenance)
    writer.append("bench", {"tokens_per_s": 123.0})
    (record,) = load_records(tmp_path)
    assert record["schema_version"] == SCHEMA_VERSION and record["kind"] == "bench"
    assert record["run_id"] == writer.run_id and record["tokens_per_s"] == 123.0
    assert record["provenance"]["libraries"]["torch"] == provenance.libraries.torch
    assert writer.path.parent.parent == tmp_path
    assert (provenance.git.sha or "nogit")[:7] in writer.path.name


def test_existing_run_file_is_never_overwritten(tmp_path, provenance):
    writer = open_run(tmp_path, provenance, run_id="fixed")
    writer.append("parity", {"passed": True})
    with pytest.raises(StoreError, match="never overwritten"):
        open_run(tmp_path, provenance, run_id="fixed")


def _append_same_file(path, provenance, name, count):
    from teswap.store.runs import RunWriter

    writer = RunWriter(path=path, run_id=name, provenance=provenance)
    for i in range(count):
        writer.append("bench", {"writer": name, "i": i, "pad": "y" * 5000})


def test_two_processes_appending_to_one_file_lose_nothing(tmp_path, provenance):
    path = tmp_path / "m" / "shared.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_same_file, args=(path, provenance, name, 200)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    records = read_records(path)
    assert sorted((r["writer"], r["i"]) for r in records) == sorted((w, i) for w in "ab" for i in range(200))


def _slow_writer(path, provenance):
    from teswap.store.runs import RunWriter

    writer = RunWriter(path=path, run_id="killed", provenance=provenance)
    for i in range(10_000):
        writer.append("bench", {"i": i})


def test_killed_writer_keeps_finished_records_and_store_stays_loadable(tmp_path, provenance):
    path = tmp_path / "m" / "killed.jsonl"
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_slow_writer, args=(path, provenance))
    proc.start()
    deadline = time.monotonic() + 30
    while (not path.exists() or path.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with open(path, "a") as handle:  # what a writer killed mid-write would leave
        handle.write('{"schema_version": 1, "kind": "bench", "i": ')
    with pytest.warns(TornRecordWarning, match=r"killed\.jsonl:\d+: unreadable record .* torn last line"):
        records = load_records(tmp_path)  # no skip_bad needed: a torn last line is what a crash leaves
    assert [r["i"] for r in records] == list(range(len(records))) and len(records) > 10
    with open(path, "a") as handle:  # the torn line is now in the middle: corruption, not a crash
        handle.write("\n" + json.dumps({"schema_version": 1, "kind": "bench", "i": -1}) + "\n")
    with pytest.raises(StoreError, match=rf"killed\.jsonl:{len(records) + 1}: unreadable record"):
        load_records(tmp_path)


def test_corrupt_line_is_named_by_file_and_line(tmp_path, provenance):
    writer = open_run(tmp_path, provenance)
    writer.append("bench", {"i": 0})
    with open(writer.path, "a") as handle:
        handle.write("not json\n")
    writer.append("bench", {"i": 1})
    with pytest.raises(StoreError, match=rf"{writer.path.name}:2: "):
        load_records(tmp_path)


def test_migration_refuses_newer_and_unversioned_records():
    with pytest.raises(ValueError, match="newer than this teswap reads"):
        migrate({"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="no integer schema_version"):
        migrate({"kind": "bench"})


def test_schema_1_bench_records_migrate_to_unpaired_unchecked_ones(tmp_path, provenance):
    """A schema-1 bench record was timed alone: it reads back with no rounds, noise verdict or clocks, and
    (schema 3) as no decode cell."""
    writer = open_run(tmp_path, provenance)
    old = {"schema_version": 1, "kind": "bench", "run_id": "old", "cell": {"backend": "torch"}, "status": "ok"}
    writer.path.parent.mkdir(parents=True)
    writer.path.write_text(json.dumps(old) + "\n" + json.dumps({**old, "kind": "parity", "case": {}}) + "\n")
    bench, parity = read_records(writer.path)
    assert bench["schema_version"] == parity["schema_version"] == SCHEMA_VERSION == 3
    assert (bench["paired"], bench["noise"], bench["clocks"]) == (None, None, None) and bench["status"] == "ok"
    assert bench["decode"] is None and bench["cell"] == {"backend": "torch", "new_tokens": 0, "options": ""}
    assert "paired" not in parity and parity["case"] == {}
    current = migrate({**old, "schema_version": SCHEMA_VERSION, "paired": {"speedup": 1.2}})
    assert current["paired"] == {"speedup": 1.2}  # a current record passes through untouched


def test_machines_get_separate_folders(tmp_path, provenance):
    other = replace(provenance, machine=replace(provenance.machine, gpu_name="NVIDIA H200", hostname="gpu-7"))
    a, b = open_run(tmp_path, provenance), open_run(tmp_path, other)
    a.append("bench", {})
    b.append("bench", {})
    assert a.path.parent != b.path.parent and b.path.parent.name == "nvidia-h200_gpu-7"
    assert json.loads(b.path.read_text())["provenance"]["machine"]["gpu_name"] == "NVIDIA H200"

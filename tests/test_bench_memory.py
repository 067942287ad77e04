"""Peak memory: the live-tensor counter's arithmetic, the CUDA path's resets, and what the swap keeps resident."""

from __future__ import annotations

import pytest
import torch

from support import llama
from teswap import build_pair
from teswap.benchmark import memory
from teswap.benchmark.memory import CUDA_METHOD, LiveTensorBytes, MemoryTracker, cpu_step_peak_bytes


def test_live_tensor_bytes_counts_allocations_frees_and_views_once():
    tracker = LiveTensorBytes()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B
        b = torch.empty(500, dtype=torch.float32)  # 2000 B
        view = a.view(10, 100)  # same storage: no new bytes
        del a
        assert tracker.current_bytes == 6000  # the view keeps a's storage alive
        del view
        c = torch.empty(250, dtype=torch.float64)  # 2000 B
    assert tracker.peak_bytes == 6000 and tracker.current_bytes == 4000
    del b, c
    assert tracker.current_bytes == 0


def test_step_peak_counts_resident_tensors_and_the_step_temporaries():
    weight = torch.ones(100, 100)  # 40 kB resident
    x = torch.ones(10, 100)  # 4 kB resident

    def step():
        hidden = x @ weight  # 4 kB
        return (hidden * 2).sum()  # + 4 kB while hidden is alive, + a 4 B scalar while both are

    assert cpu_step_peak_bytes(step, [weight, x, weight]) == 40_000 + 4_000 + 4_000 + 4_000 + 4


def _resident_bytes(model: torch.nn.Module) -> int:
    tracker = LiveTensorBytes()
    for tensor in [*model.parameters(), *model.buffers()]:
        tracker.track(tensor)
    return tracker.current_bytes


def test_swapped_model_holds_no_duplicated_weights():
    pair = build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")
    assert _resident_bytes(pair.swapped) == _resident_bytes(pair.stock)  # split q/k/v are views of one buffer


def _retained_after_forward(num_layers: int) -> int:
    pair = build_pair(llama(num_hidden_layers=num_layers), seed=0, backend="torch", dtype=torch.float32,
                      device="cpu")
    ids = torch.randint(0, 256, (2, 64))
    tracker = LiveTensorBytes()
    for tensor in [*pair.swapped.parameters(), *pair.swapped.buffers(), ids]:
        tracker.track(tensor)
    before = tracker.current_bytes
    with tracker, torch.no_grad():
        pair.swapped(ids, logits_to_keep=1, use_cache=False)
    return tracker.current_bytes - before


def test_rope_table_is_one_per_model_not_one_per_layer():
    retained = _retained_after_forward(2)
    assert retained == _retained_after_forward(6)  # what a forward leaves behind does not grow with layers
    # one [seq, 1, 1, head_dim] fp32 table, its cos and sin (computed once, not per layer), position ids
    assert retained <= 3 * 64 * 32 * 4 + 64 * 8


def test_cpu_tracker_records_the_method_and_why_there_is_no_reserved_figure():
    tracker = MemoryTracker(torch.device("cpu"))
    tracker.start()
    weight = torch.ones(64, 64)
    tracker.after_timing(lambda: weight @ weight, lambda: [weight])
    result = tracker.result()
    assert result.peak_allocated_bytes == 2 * 64 * 64 * 4
    assert result.peak_memory_method == memory.CPU_METHOD
    assert result.peak_reserved_bytes is None and "reserve" in result.peak_memory_null_reason
    if result.peak_rss_bytes is not None:  # Linux with /proc: the process high-water mark, reset at start
        assert result.peak_rss_bytes > 0 and result.peak_rss_method == memory.RSS_METHOD


def test_cuda_tracker_resets_peaks_at_cell_start_and_reads_them_after(monkeypatch):
    calls = []
    for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, _n=name: calls.append(_n))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 123)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 456)
    tracker = MemoryTracker(torch.device("cuda", 0))
    tracker.start()
    assert calls == ["synchronize", "empty_cache", "reset_peak_memory_stats"]
    tracker.after_timing(lambda: pytest.fail("no extra step on GPU"), lambda: [])
    result = tracker.result()
    assert (result.peak_allocated_bytes, result.peak_reserved_bytes, result.peak_memory_method) == (
        123, 456, CUDA_METHOD)


def test_settle_refuses_qkv_after_a_move_and_frees_what_was_left_behind():
    import gc
    import weakref

    from teswap.benchmark.residency import settle

    pair = build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")
    qkv = pair.swapped.get_submodule("model.layers.0.self_attention.layernorm_qkv")
    left_behind = weakref.ref(qkv.query_weight.untyped_storage())
    pair.swapped.to(torch.float64)  # like a device move: .to() makes separate q, k, v tensors
    assert qkv.query_weight.untyped_storage().data_ptr() != qkv.key_weight.untyped_storage().data_ptr()
    settle(pair.swapped)
    gc.collect()
    storages = {qkv.query_weight.untyped_storage().data_ptr(), qkv.key_weight.untyped_storage().data_ptr(),
                qkv.value_weight.untyped_storage().data_ptr()}
    assert len(storages) == 1  # views of one fused buffer again, made where the model now is
    assert left_behind() is None  # the old fused buffer is gone, not kept on the old device


@pytest.fixture(scope="module")
def tiny_pair():
    return build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("workload", ["prefill", "train", "decode"])
@pytest.mark.parametrize("seq_len", [32, 128])
def test_the_estimate_is_within_ten_percent_of_the_measured_peak(tiny_pair, workload, seq_len):
    """The cell's estimate against the peak the sweep measures (one untimed step under the live-tensor counter,
    after warm-up steps have made the optimizer state), for stock and the torch twin."""
    from teswap.benchmark.memory_estimate import estimate_cell
    from teswap.benchmark.mfu import ModelShape
    from teswap.benchmark.plan import Cell
    from teswap.benchmark.workloads import make_input_ids, prepare_step, release

    ids = make_input_ids(tiny_pair.config.vocab_size, 2, seq_len, seed=0, device=torch.device("cpu"))
    for backend, model in (("stock", tiny_pair.stock), ("torch", tiny_pair.swapped)):
        cell = Cell(model="tiny", workload=workload, backend=backend, precision="fp32", seq_len=seq_len, batch=2,
                    device="cpu", new_tokens=8 if workload == "decode" else 0)
        step = prepare_step(workload, model, ids, backend=backend, precision="fp32", new_tokens=cell.new_tokens)
        try:
            step()
            step()
            measured = cpu_step_peak_bytes(step, step.resident_tensors())
        finally:
            release(step)
        estimate = estimate_cell(cell, ModelShape.from_config(tiny_pair.config)).total_bytes
        assert 0.9 <= estimate / measured <= 1.1, (backend, estimate, measured)


def test_a_cell_that_would_not_fit_is_skipped_with_its_estimate_and_the_free_memory(tmp_path, monkeypatch):
    from teswap.benchmark import sweep
    from teswap.benchmark.plan import SweepSpec
    from teswap.benchmark.timing import TimingPolicy
    from teswap.hardware.free_memory import FreeMemory
    from teswap.store.provenance import capture_provenance

    free = 7_500_000  # room to build the tiny pair (3 x 2 MB) and run a prefill, not a training step (AdamW)
    monkeypatch.setattr(sweep, "free_memory", lambda device: FreeMemory(free, "test allowance"))
    spec = SweepSpec(models=("tiny",), workloads=("prefill", "train"), backends=("stock",), precisions=("fp32",),
                     seq_lens=(32,), batches=(2,), device="cpu", threads=1,
                     policy=TimingPolicy(warmup=1, min_samples=3, max_samples=4, budget_s=0.02))
    result = sweep.run_sweep(spec, results_root=tmp_path, provenance=capture_provenance())
    prefill, train = (result.records[key] for key in result.keys)
    assert prefill["status"] == "ok" and prefill["metrics"]["peak_allocated_bytes"] > 0
    assert train["status"] == "skipped" and train["stats"] is None
    assert "estimated peak 0.01 GiB (weights 0.00, gradients 0.00, optimizer 0.00, activations 0.00 GiB)" \
        in train["reason"] and "free memory, 0.01 GiB (test allowance)" in train["reason"]
    assert train["metrics"]["free_memory_bytes"] == free and train["metrics"]["free_memory_method"] == "test allowance"
    assert train["metrics"]["estimated_peak_bytes"] > 0.9 * free > prefill["metrics"]["estimated_peak_bytes"]


def test_a_pair_too_big_to_build_skips_its_cells_without_building_them(tmp_path, monkeypatch):
    from teswap.benchmark import sweep
    from teswap.benchmark.plan import SweepSpec
    from teswap.hardware.free_memory import FreeMemory
    from teswap.store.provenance import capture_provenance

    monkeypatch.setattr(sweep, "free_memory", lambda device: FreeMemory(24 * 1024**3, "test allowance"))
    monkeypatch.setattr(sweep, "build_pair", lambda *a, **k: pytest.fail("a 7B pair must not be built in 24 GiB"))
    spec = SweepSpec(models=("llama2-7b",), workloads=("prefill",), backends=("stock", "torch"),
                     precisions=("fp32",), seq_lens=(32,), batches=(1,), device="cpu", threads=1)
    result = sweep.run_sweep(spec, results_root=tmp_path, provenance=capture_provenance())
    assert [r["status"] for r in result.records.values()] == ["skipped", "skipped"]
    record = next(iter(result.records.values()))
    reason = record["reason"]
    assert record["metrics"]["free_memory_bytes"] == 24 * 1024**3 and record["metrics"]["estimated_build_bytes"] > 0
    assert reason.startswith("building the llama2-7b pair (float32: stock, swapped and the weights mapped between "
                             "them): estimated peak 75.") and "24.00 GiB" in reason


def test_free_host_memory_is_memavailable_capped_by_the_cgroup_limit(tmp_path, monkeypatch):
    from teswap.hardware import free_memory as module

    (tmp_path / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable:    4000000 kB\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    monkeypatch.setattr(module, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(module, "CGROUP", tmp_path)
    cpu = torch.device("cpu")
    assert module.free_memory(cpu) == module.FreeMemory(4_000_000 * 1024, "/proc/meminfo MemAvailable")
    (tmp_path / "memory.max").write_text(f"{2 * 1024**3}\n")  # a container limited to 2 GiB: the OOM killer's line
    assert module.free_memory(cpu) == module.FreeMemory(2 * 1024**3 - 1000, "cgroup memory.max - memory.current")

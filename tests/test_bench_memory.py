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

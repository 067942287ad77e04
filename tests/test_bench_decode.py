"""The decode workload on CPU: greedy tokens on every cache, exactly N tokens, the sweep's decode cells,
speed options skipped with their reasons, and the cell identity decode adds."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from support import llama
from teswap.benchmark.decode.options import decode_skip_reason
from teswap.benchmark.decode.setup import prepare_decode
from teswap.benchmark.decode.steps import DecodeStep, HFCacheDecoder
from teswap.benchmark.errors import BenchConfigError
from teswap.benchmark.noise import NoisePolicy
from teswap.benchmark.plan import Cell, SweepSpec, plan_cells
from teswap.benchmark.records import cell_key
from teswap.benchmark.sweep import run_sweep
from teswap.benchmark.timing import PerfCounterTimer, TimingPolicy
from teswap.benchmark.workloads import autocast_for, prepare_step
from teswap.errors import UnsupportedConfigError
from teswap.layers.rope import bind_rope
from teswap.reporting.frame import load_frame
from teswap.reporting.publish import render, sections
from teswap.store.provenance import capture_provenance
from teswap.store.runs import load_records, migrate
from teswap.swap.pair import build_pair

EAGER_COMPILE = functools.partial(torch.compile, backend="eager", fullgraph=True)  # traces, no inductor on CPU


@pytest.fixture(scope="module")
def pair():
    return build_pair(llama(vocab_size=64), backend="torch", seed=5)


def prompt(batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(1))


def generated(model, ids, new_tokens):
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:]


def decode_step(model, ids, new_tokens, cache_kind="dynamic", compiler=None):
    decoder = HFCacheDecoder(model, cache_kind=cache_kind, capacity=ids.shape[1] + new_tokens, compiler=compiler)
    return DecodeStep(model=model, input_ids=ids, new_tokens=new_tokens, autocast=torch.no_grad, decoder=decoder)


@pytest.mark.parametrize("side", ["stock", "swapped"])
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_decode_makes_generates_greedy_tokens(pair, side, cache_kind):
    model, ids = getattr(pair, side), prompt()
    step = decode_step(model, ids, 6, cache_kind)
    expected = generated(model, ids, 6)
    assert torch.equal(step(), expected)
    assert torch.equal(step(), expected)  # a reused (reset) static cache starts afresh


def test_the_compiled_static_cache_step_traces_whole_and_gives_the_same_tokens(pair):
    """cuda-graphs' code path on CPU: one-token forwards of the swapped model compiled after an eager prefill
    (fullgraph=True: a graph break fails). It once broke on a data_ptr check and a stale RoPE cache."""
    ids = prompt()
    step = decode_step(pair.swapped, ids, 5, "static", compiler=EAGER_COMPILE)
    assert step.decoder.compiled
    assert torch.equal(step(), generated(pair.swapped, ids, 5))


def test_a_position_tensor_advanced_in_place_gets_fresh_rope_angles(pair):
    table = bind_rope(pair.swapped)
    position = torch.tensor([[3]])
    first = table.freqs(position, 1, torch.device("cpu")).clone()
    position.add_(1)
    assert not torch.equal(table.freqs(position, 1, torch.device("cpu")), first)


def test_exactly_n_tokens_come_out_even_past_eos(pair):
    model, ids = pair.stock, prompt(batch=1)
    first = decode_step(model, ids, 2)()[0, 0].item()
    eos = decode_step(model, ids, 8)()[0, 3].item()  # the 4th token: generate() would stop there
    config = model.generation_config
    old = config.eos_token_id
    config.eos_token_id = eos
    try:
        stops_early = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                     pad_token_id=0).shape[1] - ids.shape[1]
        tokens = decode_step(model, ids, 8)()
    finally:
        config.eos_token_id = old
    assert stops_early < 8 and tokens.shape == (1, 8) and tokens[0, 0].item() == first


def test_prepare_decode_refuses_fp8_weights_outside_te(pair):
    with pytest.raises(UnsupportedConfigError, match="te backend only"):
        prepare_decode(pair.swapped, prompt(), backend="torch", precision="fp32", new_tokens=4,
                       options="fp8-weights", autocast=autocast_for("torch", "fp32"))


@pytest.mark.parametrize(("changes", "reason"), [
    ({"options": "cuda-graphs"}, "cuda-graphs needs a CUDA device; this cell runs on cpu"),
    ({"options": "fp8-weights", "backend": "torch", "precision": "fp8-current"}, "te backend only"),
    ({"options": "fp8-weights", "backend": "te", "device": "cuda:0"}, "needs an FP8 precision"),
    ({"options": "cuda-graphs", "backend": "torch", "precision": "fp8-delayed", "device": "cuda:0"},
     "FP8 emulation refuses"),
    ({"backend": "te", "precision": "fp8-current", "batch": 4, "device": "cuda:0"}, "multiple of 8"),
])
def test_decode_cells_that_cannot_run_say_why(changes, reason):
    cell = Cell(**{**dict(model="tiny", workload="decode", backend="stock", precision="bf16", seq_len=8, batch=8,
                          device="cpu", new_tokens=4), **changes})
    assert reason in decode_skip_reason(cell)
    runnable = Cell(**{**cell.to_dict(), "options": "", "backend": "te", "precision": "fp8-current", "batch": 8})
    assert decode_skip_reason(runnable) is None


def spec(**overrides) -> SweepSpec:
    base = dict(models=("tiny",), workloads=("decode",), backends=("stock", "torch"), precisions=("fp32",),
                seq_lens=(8,), batches=(2,), device="cpu", new_tokens=(3,), options=("none", "cuda-graphs"),
                policy=TimingPolicy(warmup=1, min_samples=3, min_rounds=3, budget_s=0.05, block_steps=1),
                noise=NoisePolicy(remeasure=0))
    return SweepSpec(**(base | overrides))


def test_the_spec_validates_and_plans_decode_axes():
    with pytest.raises(BenchConfigError, match="new_tokens: need integers >= 2"):
        spec(new_tokens=(1,))
    with pytest.raises(BenchConfigError, match="unknown speed option 'turbo'"):
        spec(options=("turbo",))
    assert spec(options=("fp8-weights+cuda-graphs", "none")).options == ("cuda-graphs+fp8-weights", "")
    cells = plan_cells(spec(workloads=("prefill", "decode"), options=("none", "cuda-graphs+fp8-weights")))
    prefill = [c for c in cells if c.workload == "prefill"]
    assert {(c.new_tokens, c.options) for c in prefill} == {(0, "")}
    stock = {c.options for c in cells if c.workload == "decode" and c.backend == "stock"}
    assert stock == {"", "cuda-graphs"}  # stock runs what it can of each set: its baselines
    assert {c.options for c in cells if c.backend == "torch" and c.workload == "decode"} == {
        "", "cuda-graphs+fp8-weights"}


def test_new_cell_fields_leave_older_cells_keys_and_records_as_they_were():
    provenance = capture_provenance().to_dict()
    old = dict(model="tiny", workload="prefill", backend="stock", precision="fp32", seq_len=8, batch=2, device="cpu")
    assert cell_key(old, {}, provenance) == cell_key(Cell(**old).to_dict(), {}, provenance)
    decode = Cell(**{**old, "workload": "decode", "new_tokens": 4}).to_dict()
    assert cell_key(decode, {}, provenance) != cell_key({**decode, "new_tokens": 5}, {}, provenance)
    migrated = migrate({"schema_version": 2, "kind": "bench", "cell": old, "status": "ok"})
    assert migrated["schema_version"] == 3 and migrated["decode"] is None
    assert migrated["cell"] == {**old, "new_tokens": 0, "options": ""}


def test_a_decode_sweep_on_cpu_writes_the_metrics_and_skips_graphs(tmp_path: Path):
    result = run_sweep(spec(), results_root=tmp_path, provenance=capture_provenance())
    records = {(r["cell"]["backend"], r["cell"]["options"]): r for r in load_records(tmp_path, kind="bench")}
    assert set(records) == {("stock", ""), ("stock", "cuda-graphs"), ("torch", ""), ("torch", "cuda-graphs")}
    for options in ("cuda-graphs",):
        for backend in ("stock", "torch"):
            assert records[(backend, options)]["status"] == "skipped"
            assert "CUDA device" in records[(backend, options)]["reason"]
    stock, torch_ = records[("stock", "")], records[("torch", "")]
    for record in (stock, torch_):
        metrics, decode = record["metrics"], record["decode"]
        assert record["status"] == "ok" and record["cell"]["new_tokens"] == 3
        assert metrics["ttft_s"] > 0 and 0 < metrics["tpot_s"] <= metrics["itl_p99_s"] * 1.0001
        assert metrics["itl_p50_s"] <= metrics["itl_p90_s"] <= metrics["itl_p99_s"]
        assert metrics["tokens_per_s"] == pytest.approx(metrics["e2e_tokens_per_s"])  # output tokens, end to end
        assert metrics["energy_per_output_token_j"] is None and "NVML" in metrics["energy_null_reason"]
        assert metrics["flops_per_token"] > 0 and metrics["mfu_null_reason"]
        assert decode["generations"] == record["stats"]["count"] == len(decode["itl_s"]) == len(decode["ttft_s"])
        assert all(len(gaps) == 2 for gaps in decode["itl_s"])  # N - 1 per generation
        assert decode["cache"] == "dynamic" and decode["prompt_tokens"] == 8
    assert stock["paired"] is None
    phases = torch_["paired"]["phases"]
    assert set(phases) == {"ttft_s", "tpot_s"}
    assert all(p["ci_low"] <= p["ratio"] <= p["ci_high"] for p in phases.values())
    assert torch_["paired"]["baseline"] == stock["cell"]
    json.dumps(torch_)  # plain JSON all through
    again = run_sweep(spec(), results_root=tmp_path, provenance=capture_provenance())
    assert again.resumed == 2 and again.written == 2  # the ok cells resume; skipped ones are tried again
    assert result.written == 4
    (part,) = sections(load_frame(tmp_path))  # the published report shows these records' figures
    published = render([part], "md")
    assert "### Decode" in published and f"| {stock['metrics']['tpot_s'] * 1e3:.3g} |" in published
    assert "cuda-graphs needs a CUDA device" in published


def test_bench_refuses_bad_decode_flags_with_one_line(capsys):
    from teswap.cli import main

    for argv in (["--new-tokens", "1"], ["--options", "turbo"], ["--new-tokens", "x"]):
        try:
            code = main(["bench", "--workloads", "decode", "--device", "cpu", "--results", "/nonexistent", *argv])
        except SystemExit as exit_info:  # argparse's own refusals
            code = exit_info.code
        assert code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("teswap: error:")


def test_the_trained_model_decodes_the_same_tokens_swapped_and_its_cells_metrics_follow(smollm2):
    """One short real-model check: SmolLM2-135M, a 6-token prompt, 4 forced tokens, stock and torch alike,
    each through the sweep's own decode step (prepare_step), one timed generation summarised."""
    real = build_pair("smollm2-135m")
    ids = torch.tensor([[504, 3575, 282, 4649, 314, 253]])  # a short real prompt's ids
    steps = {side: prepare_step("decode", getattr(real, side), ids, backend=backend, precision="fp32", new_tokens=4)
             for side, backend in (("stock", "stock"), ("swapped", "torch"))}
    tokens = {side: step() for side, step in steps.items()}
    assert torch.equal(tokens["stock"], tokens["swapped"])
    assert torch.equal(tokens["stock"], generated(real.stock, ids, 4))
    timings = steps["swapped"].timed(PerfCounterTimer())
    metrics, field = steps["swapped"].summarize({name: [value] for name, value in timings.items()})
    assert metrics["tpot_s"] == pytest.approx((timings["step_s"] - timings["ttft_s"]) / 3)
    assert metrics["decode_tokens_per_s"] == pytest.approx(3 / (timings["step_s"] - timings["ttft_s"]))
    assert field["prompt_tokens"] == 6 and len(field["itl_s"][0]) == 3 and field["cache"] == "dynamic"

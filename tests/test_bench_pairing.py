"""Paired timing: a synthetic clock that slows one phase of the run, the rounds' order, the ratio's CI,
and the noise guard (re-measure, noisy with reasons, NVML clocks and slowdown reasons).

The timer here replays a known machine: each model has a true step time, times a slowdown while a
"busy neighbour" phase is on, times a small seeded jitter, and advances a fake clock by what it
returns. Everything else (warm-up, rounds, stopping rule, statistics, noise guard, memory step) is
the real code on the tiny preset.
"""

from __future__ import annotations

import random

import pytest
import torch

from teswap import build_pair
from teswap.benchmark.clocks import ClockLog
from teswap.benchmark.mfu import ModelShape
from teswap.benchmark.noise import NoisePolicy, assess
from teswap.benchmark.plan import Cell
from teswap.benchmark.rounds import block_order
from teswap.benchmark.runner import Baseline, CellContext, measure_cell
from teswap.benchmark.timing import Timer, TimingPolicy
from teswap.hardware.nvml import PowerMeter
from teswap.statistics import independent_ratio, paired_ratio

STOCK_S, SWAPPED_S = 1.0e-3, 0.8e-3  # true speedup 1.25
TRUE_SPEEDUP = STOCK_S / SWAPPED_S


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class PhaseTimer(Timer):
    """Step time = the model's true time x `factor` while the clock is in [slow_from_s, slow_until_s) x jitter."""

    name = "synthetic"

    def __init__(self, clock: FakeClock, true_s: dict[int, float], *, slow_from_s: float, slow_until_s: float,
                 factor: float, jitter: float = 0.02) -> None:
        self.clock, self.true_s = clock, true_s
        self.slow_from_s, self.slow_until_s, self.factor = slow_from_s, slow_until_s, factor
        self.jitter, self.rng = jitter, random.Random(0)
        self.calls = 0

    def time(self, step) -> float:
        slow = self.slow_from_s <= self.clock.now < self.slow_until_s
        duration = self.true_s[id(step.model)] * (self.factor if slow else 1.0)
        duration *= 1 + self.rng.uniform(-self.jitter, self.jitter)
        self.clock.now += duration
        self.calls += 1
        return duration


@pytest.fixture(scope="module")
def pair():
    return build_pair("tiny", seed=0, backend="torch", dtype=torch.float32, device="cpu")


def cell(backend: str, workload: str = "prefill") -> Cell:
    return Cell(model="tiny", workload=workload, backend=backend, precision="fp32", seq_len=16, batch=1, device="cpu")


def context(pair, clock: FakeClock, policy: TimingPolicy, *, noise: NoisePolicy | None = None, meter=None,
            **timer_args) -> CellContext:
    timer = PhaseTimer(clock, {id(pair.stock): STOCK_S, id(pair.swapped): SWAPPED_S}, **timer_args)
    return CellContext(policy=policy, noise=noise or NoisePolicy(remeasure=0), timer=timer, clock=clock, meter=meter,
                       energy_null_reason=None if meter else "no power meter")


FIXED_40 = TimingPolicy(warmup=1, min_samples=40, max_samples=40, block_steps=1, min_rounds=1, budget_s=1e9)


def test_paired_ci_holds_the_true_ratio_where_sequential_timing_misses_it(pair):
    """A neighbour slows everything 2x from 40 ms on: exactly when the swapped cell is timed after stock."""
    shape = ModelShape.from_config(pair.config)
    slow = dict(slow_from_s=0.040, slow_until_s=1e9, factor=2.0)

    clock = FakeClock()
    ctx = context(pair, clock, FIXED_40, **slow)
    stock = measure_cell(cell("stock"), pair.stock, shape, ctx)  # 40 x 1 ms: all before the slow phase
    swapped = measure_cell(cell("torch"), pair.swapped, shape, ctx)  # all inside it
    sequential = independent_ratio(stock.stats.samples_s, swapped.stats.samples_s)
    assert sequential.estimate == pytest.approx(TRUE_SPEEDUP / 2, rel=0.03)
    assert not sequential.contains(TRUE_SPEEDUP) and sequential.ci_high < 0.7

    clock = FakeClock()
    ctx = context(pair, clock, TimingPolicy(warmup=1, min_samples=40, max_samples=40, block_steps=1, min_rounds=1,
                                            budget_s=1e9), **slow)
    paired = measure_cell(cell("torch"), pair.swapped, shape, ctx, baseline=Baseline(cell=cell("stock"),
                                                                                      model=pair.stock))
    assert paired.status == "ok", paired.reason
    record = paired.paired
    assert record["rounds"] == 20 and len(record["samples_s"]) == len(record["baseline_samples_s"]) == 20
    assert all(len(r) == 2 for r in record["samples_s"] + record["baseline_samples_s"])  # ABBA: 2 blocks a side
    assert record["speedup_ci_low"] <= TRUE_SPEEDUP <= record["speedup_ci_high"]
    assert record["speedup"] == pytest.approx(TRUE_SPEEDUP, rel=0.03)
    assert record["speedup_ci_high"] - record["speedup_ci_low"] < 0.1
    # The same interval, recomputed from the stored rounds: the record is self-describing.
    again = paired_ratio(record["baseline_samples_s"], record["samples_s"])
    assert (again.ci_low, again.ci_high) == (record["speedup_ci_low"], record["speedup_ci_high"])
    # The slow phase made both sides drift: the cell says so, though its ratio is right.
    assert paired.noise["noisy"] and any(" drift +" in reason for reason in paired.noise["reasons"])
    assert paired.metrics["tokens_per_s"] == pytest.approx(16 / paired.stats.median_s)


def test_abba_rounds_alternate_who_goes_first_and_random_is_seeded():
    rng = random.Random(0)
    assert [block_order(2, i, "abba", rng) for i in range(3)] == [[0, 1, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0]]
    assert block_order(1, 5, "abba", rng) == [0]
    first = [block_order(2, i, "random", random.Random(3)) for i in range(4)]
    assert first == [block_order(2, i, "random", random.Random(3)) for i in range(4)]
    assert all(sorted(blocks) == [0, 0, 1, 1] for blocks in first)


def test_paired_rounds_stop_once_the_speedup_ci_is_tight(pair):
    shape = ModelShape.from_config(pair.config)
    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_samples=4, max_samples=2000, target_rel_ci=0.01, min_rounds=6,
                          block_steps=2, budget_s=1e9)
    ctx = context(pair, clock, policy, slow_from_s=1e9, slow_until_s=1e9, factor=1.0, jitter=0.01)
    outcome = measure_cell(cell("torch"), pair.swapped, shape, ctx, baseline=Baseline(cell=cell("stock"),
                                                                                       model=pair.stock))
    record = outcome.paired
    assert outcome.stats.stop_reason == "ci" and record["rounds"] >= 6
    assert (record["speedup_ci_high"] - record["speedup_ci_low"]) / 2 <= 0.011 * record["speedup"]
    assert not outcome.noise["noisy"] and outcome.noise["attempts"] == 1


def test_a_noisy_cell_is_measured_again_and_kept_when_the_retry_is_steady(pair):
    """The neighbour is busy for the first try only: the retry passes, and the record says it took two."""
    shape = ModelShape.from_config(pair.config)
    clock = FakeClock()
    ctx = context(pair, clock, FIXED_40, noise=NoisePolicy(remeasure=1), slow_from_s=0.020, slow_until_s=0.060,
                  factor=3.0)
    outcome = measure_cell(cell("stock"), pair.stock, shape, ctx)
    assert outcome.noise["attempts"] == 2 and not outcome.noise["noisy"]
    (first_try,) = outcome.noise["earlier_reasons"]
    assert any(reason.startswith("stock drift +") for reason in first_try)
    assert outcome.stats.median_s == pytest.approx(STOCK_S, rel=0.03)  # the steady retry's samples


def test_a_cell_noisy_on_every_try_is_marked_with_its_reasons(pair):
    shape = ModelShape.from_config(pair.config)
    clock = FakeClock()
    ctx = context(pair, clock, FIXED_40, noise=NoisePolicy(remeasure=1), slow_from_s=0.0, slow_until_s=1e9,
                  factor=1.0, jitter=0.6)  # every step anywhere in ±60 %
    outcome = measure_cell(cell("stock"), pair.stock, shape, ctx)
    assert outcome.status == "ok" and outcome.noise["noisy"] and outcome.noise["attempts"] == 2
    assert any(reason.startswith("stock CV ") for reason in outcome.noise["reasons"])
    assert outcome.noise["figures"]["measured_cv"] > 0.15


class ThrottledMeter(PowerMeter):
    """A GPU whose SM clock sags from 1980 to 1500 MHz under a software power cap, getting hot."""

    def __init__(self) -> None:
        self.reads = 0

    def total_energy_mj(self) -> int:
        return 0

    def power_w(self) -> float:
        return 700.0

    def temperature_c(self) -> float:
        return 80.0 + self.reads

    def sm_clock_mhz(self) -> float:
        self.reads += 1
        return 1980.0 if self.reads < 5 else 1500.0

    def memory_used_bytes(self) -> int:
        return 1 << 30

    def memory_clock_mhz(self) -> float:
        return 2619.0

    def clock_event_reasons(self) -> int:
        return 0x4 if self.reads >= 5 else 0x1  # sw_power_cap once it sags; gpu_idle before


def test_clocks_are_recorded_and_a_throttled_gpu_makes_the_cell_noisy():
    log = ClockLog(meter=ThrottledMeter())
    for _ in range(8):
        log.read()
    verdict = assess([("measured", "te", [1.0] * 12)], None, log, NoisePolicy())
    assert verdict.noisy
    assert "GPU clocks held down: sw_power_cap" in verdict.reasons
    assert "SM clock 1500-1980 MHz, spread 24% > 5%" in verdict.reasons
    assert "GPU 88 °C > 85 °C" in verdict.reasons
    clocks = log.to_dict()
    assert (clocks["sm_clock_min_mhz"], clocks["sm_clock_max_mhz"]) == (1500.0, 1980.0)
    assert clocks["memory_clock_min_mhz"] == clocks["memory_clock_max_mhz"] == 2619.0
    assert clocks["event_reasons"] == ["gpu_idle", "sw_power_cap"] and clocks["slowdown_reasons"] == ["sw_power_cap"]
    assert clocks["snapshots"] == 8 and clocks["null_reasons"] == {}


def test_a_meter_without_clock_queries_keeps_the_rest_with_reasons():
    class OldMeter(ThrottledMeter):
        memory_clock_mhz = PowerMeter.memory_clock_mhz
        clock_event_reasons = PowerMeter.clock_event_reasons

    log = ClockLog(meter=OldMeter())
    log.read()
    clocks = log.to_dict()
    assert clocks["sm_clock_max_mhz"] == 1980.0 and clocks["memory_clock_max_mhz"] is None
    assert "does not read the memory clock" in clocks["null_reasons"]["memory_clock_mhz"]
    assert clocks["event_reasons"] == [] and "event_reasons" in clocks["null_reasons"]
    assert ClockLog(meter=None, null_reason="device is cpu").to_dict() == {"snapshots": 0,
                                                                            "null_reason": "device is cpu"}


def test_throttle_reasons_reach_the_record_through_measure(pair):
    shape = ModelShape.from_config(pair.config)
    clock = FakeClock()
    ctx = context(pair, clock, TimingPolicy(warmup=0, min_samples=8, max_samples=8, min_rounds=1, budget_s=1e9),
                  meter=ThrottledMeter(), slow_from_s=1e9, slow_until_s=1e9, factor=1.0)
    outcome = measure_cell(cell("stock"), pair.stock, shape, ctx)
    assert outcome.clocks["slowdown_reasons"] == ["sw_power_cap"] and outcome.clocks["snapshots"] == 8
    assert outcome.noise["noisy"] and outcome.noise["attempts"] == 1  # remeasure=0 in this context


class CountingTimer(Timer):
    name = "counting"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def time(self, step) -> float:
        step()
        self.clock.now += 1e-3
        return 1e-3


def test_each_block_runs_between_its_sides_enter_and_leave_in_abba_order():
    from teswap.benchmark.rounds import Side, run_rounds

    log: list[str] = []

    def side(name: str) -> Side:
        return Side(cell=cell(name), step=lambda: log.append(name), enter=lambda: log.append(f"{name}+"),
                    leave=lambda: log.append(f"{name}-"))

    clock = FakeClock()
    policy = TimingPolicy(warmup=0, min_samples=4, max_samples=4, block_steps=2, block_warmup=1, min_rounds=1)
    rounds = run_rounds([side("stock"), side("torch")], policy, CountingTimer(clock), clocks=ClockLog(meter=None),
                        clock=clock)
    block = lambda name: [f"{name}+", name, name, name, f"{name}-"]  # noqa: E731 - one untimed step, two timed
    assert log == block("stock") + block("torch") + block("torch") + block("stock")
    assert rounds.count == 1 and rounds.stop_reason == "max_samples"
    assert rounds.samples == [[[1e-3] * 4], [[1e-3] * 4]]


def test_placements_give_moves_only_where_models_must_move(monkeypatch):
    from types import SimpleNamespace

    from teswap.benchmark.residency import Placement, fits_together, hooks_for

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")  # hooks are built, never called: no GPU needed
    model, step = torch.nn.Linear(2, 2), SimpleNamespace(model=None, optimizer=None)
    assert set(hooks_for(Placement.alternating(gpu), model, step)) == {"enter", "leave"}
    assert set(hooks_for(Placement.resident(gpu).as_baseline(), model, step)) == {"dismiss"}
    assert hooks_for(Placement.resident(gpu), model, step) == {}
    assert hooks_for(Placement.alternating(cpu), model, step) == {}
    assert fits_together(cpu, None) and not fits_together(gpu, None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=100))
    assert fits_together(gpu, 45) and not fits_together(gpu, 46)  # 2 x peak within 90 % of the memory


class PhasedStep:
    """A workload that times phases inside its step, as a decode workload would (TTFT, TPOT)."""

    tokens_per_step = 16

    def __init__(self, clock: FakeClock, ttft_s: float, tpot_s: float, seed: int) -> None:
        self.clock, self.ttft_s, self.tpot_s = clock, ttft_s, tpot_s
        self.rng = random.Random(seed)

    def __call__(self) -> None:
        pass

    def timed(self, timer: Timer) -> dict[str, float]:
        load = 2.0 if 0.05 <= self.clock.now < 0.15 else 1.0  # a neighbour in the middle of the run
        ttft, tpot = (t * load * (1 + self.rng.uniform(-0.01, 0.01)) for t in (self.ttft_s, self.tpot_s))
        self.clock.now += ttft + 8 * tpot
        return {"step_s": ttft + 8 * tpot, "ttft_s": ttft, "tpot_s": tpot}


def test_a_workload_that_times_phases_gets_every_phase_paired_without_new_pairing_code():
    from teswap.benchmark.rounds import Side, paired_fields, run_rounds

    clock = FakeClock()
    stock = Side(cell=cell("stock"), step=PhasedStep(clock, ttft_s=4e-3, tpot_s=1e-3, seed=1))
    swapped = Side(cell=cell("torch"), step=PhasedStep(clock, ttft_s=2e-3, tpot_s=1e-3, seed=2))
    policy = TimingPolicy(warmup=0, min_samples=40, max_samples=40, block_steps=2, min_rounds=1)
    rounds = run_rounds([stock, swapped], policy, CountingTimer(clock), clocks=ClockLog(meter=None), clock=clock)
    phases = paired_fields(rounds, stock, "resident", 0)["phases"]
    assert set(phases) == {"ttft_s", "tpot_s"}
    assert phases["ttft_s"]["ci_low"] <= 2.0 <= phases["ttft_s"]["ci_high"]  # TTFT: swapped twice as fast
    assert phases["tpot_s"]["ci_low"] <= 1.0 <= phases["tpot_s"]["ci_high"]  # TPOT: the same
    assert len(phases["ttft_s"]["samples"]) == rounds.count and all(len(r) == 4 for r in phases["ttft_s"]["samples"])


def test_a_sweep_on_a_throttling_gpu_records_clocks_per_cell_and_warns(tmp_path, monkeypatch):
    from contextlib import contextmanager

    from teswap.benchmark import sweep as sweep_module
    from teswap.benchmark.plan import SweepSpec
    from teswap.store.provenance import capture_provenance

    meter = ThrottledMeter()

    @contextmanager
    def throttled(device):
        yield meter, None

    monkeypatch.setattr(sweep_module, "power_meter", throttled)  # NVML replaced; the sweep itself is real
    spec = SweepSpec(models=("tiny",), workloads=("prefill",), backends=("stock", "torch"), precisions=("fp32",),
                     seq_lens=(16,), batches=(1,), device="cpu", threads=1, noise=NoisePolicy(remeasure=0),
                     policy=TimingPolicy(warmup=0, min_samples=4, max_samples=8, budget_s=0.01, min_rounds=3))
    result = sweep_module.run_sweep(spec, results_root=tmp_path, provenance=capture_provenance())
    stock, swapped = (result.records[key] for key in result.keys)
    for record in (stock, swapped):
        clocks = record["clocks"]
        assert clocks["snapshots"] >= 4 and clocks["sm_clock_min_mhz"] in (1500.0, 1980.0)
        assert clocks["memory_clock_min_mhz"] == 2619.0 and clocks["temperature_max_c"] > 80
    assert swapped["clocks"]["slowdown_reasons"] == ["sw_power_cap"] and swapped["noise"]["noisy"]
    assert "GPU clocks held down: sw_power_cap" in swapped["noise"]["reasons"]
    assert any("torch/fp32" in w and "Locking clocks" in w for w in result.warnings)

"""pytest-benchmark wiring for teswap's suites: options, the cells to run, resident models, machine info.

    pytest bench/                                   # this machine's default sweep (tiny on CPU)
    pytest bench/ -m smoke                          # a few short cells
    pytest bench/ --benchmark-json=out.json && teswap bench --from-pytest-json out.json

Options (unset: the defaults `teswap bench` uses on this hardware): --teswap-device, --teswap-models,
--teswap-backends, --teswap-precisions, --teswap-seq-lens, --teswap-batches, --teswap-rounds,
--teswap-warmup, --teswap-min-energy-window-s.
"""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest
import torch

from teswap.benchmark.plan import Cell, SweepSpec, default_spec, plan_cells, resolve_device
from teswap.benchmark.pytest_bench import update_machine_info
from teswap.benchmark.residency import HOST, move, offload
from teswap.benchmark.runner import Baseline
from teswap.hardware.probe import default_device, probe_te
from teswap.precision.table import PRECISIONS, baseline_precision
from teswap.swap.pair import build_pair

SMOKE_MAX_TOKENS = 128  # cells up to this many tokens per step on the tiny preset are marked smoke


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("teswap bench")
    for name, help_text in (("device", "cpu or cuda[:N]"), ("models", "comma-separated presets"),
                            ("backends", "stock,torch,te"), ("precisions", "fp32,bf16,fp8-delayed,..."),
                            ("seq-lens", "e.g. 32,64,128"), ("batches", "e.g. 1,2")):
        group.addoption(f"--teswap-{name}", default=None, help=help_text)
    group.addoption("--teswap-rounds", type=int, default=None, help="timed rounds per cell")
    group.addoption("--teswap-warmup", type=int, default=None, help="untimed steps per cell")
    group.addoption("--teswap-min-energy-window-s", type=float, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: a short CPU-sized cell of the benchmark suite")


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """GPU name/UUID/limits/clocks, driver, CUDA runtime and driver, TE version, teswap provenance."""
    update_machine_info(machine_info, _device(config))


def _device(config: pytest.Config) -> torch.device:
    return resolve_device(config.getoption("teswap_device") or default_device())


def _split(text: str | None, cast=str) -> tuple | None:
    return None if text is None else tuple(cast(part) for part in text.split(",") if part.strip())


def suite_spec(config: pytest.Config) -> SweepSpec:
    """The cells to benchmark: the options given, the rest from this hardware's defaults."""
    spec, _ = default_spec(_device(config), te_available=bool(probe_te()))
    option = config.getoption
    return spec.overriding(models=_split(option("teswap_models")), backends=_split(option("teswap_backends")),
                           precisions=_split(option("teswap_precisions")),
                           seq_lens=_split(option("teswap_seq_lens"), int),
                           batches=_split(option("teswap_batches"), int))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_cell" not in metafunc.fixturenames:
        return
    cells = plan_cells(suite_spec(metafunc.config))
    params = [pytest.param(cell, id=_test_id(cell),
                           marks=[pytest.mark.smoke] if _is_smoke(cell) else [])
              for cell in cells]
    metafunc.parametrize("bench_cell", params)


def _test_id(cell: Cell) -> str:
    """e.g. tiny-prefill-torch-fp32-s32-b2: usable in -k expressions."""
    return f"{cell.model}-{cell.workload}-{cell.backend}-{cell.precision}-s{cell.seq_len}-b{cell.batch}"


def _is_smoke(cell: Cell) -> bool:
    return cell.model == "tiny" and cell.device == "cpu" and cell.tokens_per_step <= SMOKE_MAX_TOKENS


class ResidentModels:
    """One pair in host memory at a time; on the device, the cell's model and, for a swapped cell timed
    paired, its pair's stock model beside it (as `teswap bench` when both fit)."""

    def __init__(self, spec: SweepSpec) -> None:
        self.device = resolve_device(spec.device)
        self.build_device = self.device if spec.build_on == "device" else HOST
        self.stock_builder = next((b for b in spec.backends if b != "stock"), "torch")
        self.paired = spec.paired and "stock" in spec.backends
        self.seed = spec.seed
        self.pair_key: tuple | None = None
        self.pair = None
        self.on_device: list[torch.nn.Module] = []

    def _pair_for(self, cell: Cell):
        builder = self.stock_builder if cell.backend == "stock" else cell.backend
        key = (cell.model, baseline_precision(cell.precision), builder)
        if key != self.pair_key:
            self.evict()
            self.pair = None
            gc.collect()
            self.pair = build_pair(cell.model, seed=self.seed, backend=builder, dtype=PRECISIONS[key[1]].model_dtype,
                                   device=self.build_device)
            if self.build_device.type != "cpu":
                offload(self.pair)
            self.pair_key = key
        return self.pair

    def _place(self, models: list[torch.nn.Module]) -> None:
        # A paired cell sends its stock model back to the host after its rounds: check where models are.
        placed = [id(m) for m in models] == [id(m) for m in self.on_device]
        if not placed or any(next(m.parameters()).device != self.device for m in models):
            self.evict()
            self.on_device = [move(m, self.device) if self.device.type != "cpu" else m for m in models]

    def models_for(self, cell: Cell) -> tuple[torch.nn.Module, Baseline | None]:
        """The cell's model on the device and, for a swapped cell of a sweep with stock, the stock cell and
        model it is timed against (on the device beside it)."""
        pair = self._pair_for(cell)
        if cell.backend == "stock" or not self.paired:
            model = pair.stock if cell.backend == "stock" else pair.swapped
            self._place([model])
            return model, None
        self._place([pair.stock, pair.swapped])
        stock = replace(cell, backend="stock", precision=baseline_precision(cell.precision))
        return pair.swapped, Baseline(cell=stock, model=pair.stock)

    def evict(self) -> None:
        if self.device.type != "cpu":
            for model in self.on_device:
                move(model, HOST)
        self.on_device = []


@pytest.fixture(scope="session")
def resident_models(pytestconfig: pytest.Config):
    spec = suite_spec(pytestconfig)
    previous = torch.get_num_threads()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)  # same as `teswap bench` on this hardware
    models = ResidentModels(spec)
    yield models
    models.evict()
    torch.set_num_threads(previous)

"""What a sweep measures: the settings (`SweepSpec`), its cells, and the defaults for this hardware.

A cell is one (model, workload, backend, precision, seq_len, batch, device); a decode cell adds
new_tokens (generated after a prompt of seq_len tokens) and its speed options (teswap.speed_options;
a stock decode cell has the options stock can run). The stock model runs at
the model dtype of the precisions asked for (fp32, or bf16 as the baseline of bf16 and the FP8
recipes), once per (model, workload, seq_len, batch, dtype); the swapped model runs once per backend
and precision. Cells are grouped by (model, dtype) so each pair is built once, and ordered prefill
before train because training steps move the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from teswap.benchmark.errors import BenchConfigError
from teswap.benchmark.noise import NoisePolicy
from teswap.benchmark.timing import TimingPolicy
from teswap.benchmark.workloads import WORKLOADS
from teswap.precision.table import PRECISIONS, baseline_precision
from teswap.speed_options import NONE, option_names, options_label, parse_options, stock_options
from teswap.swap.positions import beyond_limit

SWAPPED_BACKENDS = ("torch", "te")
# The CPU default leaves decode out: `teswap run` and the test suite run that sweep, and decode's cells
# (a generation per step) would double its time; `--workloads decode` runs them.
CPU_WORKLOADS = ("prefill", "train")
BACKENDS = ("stock", *SWAPPED_BACKENDS)
BUILD_ON = ("host", "device")


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One measured configuration; `to_dict()` is the record's "cell" field."""

    model: str
    workload: str
    backend: str  # "stock", "torch" or "te"
    precision: str
    seq_len: int  # tokens per row of a forward (prefill, train) or of the prompt (decode)
    batch: int
    device: str
    new_tokens: int = 0  # decode: tokens generated after the prompt; 0 for prefill and train
    options: str = ""  # decode speed options, canonical (teswap.speed_options); "" for none
    beyond_max_positions: bool = False  # more positions than the model's max_position_embeddings, asked for

    def to_dict(self) -> dict[str, Any]:
        """The record's "cell"; `beyond_max_positions` only where set, so other cells read as before."""
        fields = asdict(self)
        if not self.beyond_max_positions:
            del fields["beyond_max_positions"]
        return fields

    @property
    def positions(self) -> int:
        """The longest sequence the cell runs: the prompt and, for decode, every generated token."""
        return self.seq_len + (self.new_tokens if self.workload == "decode" else 0)

    @property
    def tokens_per_step(self) -> int:
        """Tokens a step processes: batch x seq_len, or for decode the output tokens, batch x new_tokens."""
        return self.batch * (self.new_tokens if self.workload == "decode" else self.seq_len)

    def label(self) -> str:
        decode = f" n={self.new_tokens}" if self.workload == "decode" else ""
        return (f"{self.model} {self.workload} {self.backend}/{self.precision}{options_label(self.options)} "
                f"s={self.seq_len}{decode} b={self.batch}")


def resolve_device(text: str) -> torch.device:
    """A torch device with its index filled in; refuses devices this harness cannot measure."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise BenchConfigError(f"invalid device {text!r}; use cpu or cuda[:N]") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise BenchConfigError(f"device {text!r} is not supported; use cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise BenchConfigError(f"device {text!r} asked for, but torch sees no CUDA device; use --device cpu")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise BenchConfigError(f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)


def _require_choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    if not values:
        raise BenchConfigError(f"{name}: give at least one")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise BenchConfigError(f"{name}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")


def _require_positive(name: str, values: Sequence[int]) -> None:
    if not values or any(v <= 0 for v in values):
        raise BenchConfigError(f"{name}: need one or more positive integers, got {list(values)}")


@dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """Everything a sweep needs; validated on construction."""

    models: tuple[str, ...]
    workloads: tuple[str, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    seq_lens: tuple[int, ...]  # prefill/train lengths, and decode prompt lengths
    batches: tuple[int, ...]
    device: str
    new_tokens: tuple[int, ...] = (16,)  # decode: tokens generated after each prompt
    options: tuple[str, ...] = ("",)  # decode speed option sets, each a cell variant ("" = none)
    seed: int = 0
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    noise: NoisePolicy = field(default_factory=NoisePolicy)
    paired: bool = True  # swapped cells timed in interleaved rounds with their stock baseline
    min_energy_window_s: float = 5.0
    sample_interval_s: float = 0.05
    idle_s: float = 0.0
    cooldown_s: float = 0.0
    threads: int | None = None  # torch intra-op threads during the sweep; None leaves torch's setting
    build_on: str = "host"  # where pairs are built: "host", or "device" (then offloaded to the host)
    beyond_max_positions: bool = False  # run cells longer than a model's max_position_embeddings (else refused)

    def __post_init__(self) -> None:
        if not self.models:
            raise BenchConfigError("models: give at least one")
        _require_choices("workloads", self.workloads, WORKLOADS)
        _require_choices("backends", self.backends, BACKENDS)
        _require_choices("precisions", self.precisions, tuple(PRECISIONS))
        _require_positive("seq_lens", self.seq_lens)
        _require_positive("batches", self.batches)
        if not self.new_tokens or any(n < 2 for n in self.new_tokens):
            raise BenchConfigError(f"new_tokens: need integers >= 2 (TPOT divides by N - 1), "
                                   f"got {list(self.new_tokens)}")
        try:
            canonical = tuple(dict.fromkeys(parse_options(text) for text in self.options))
        except ValueError as err:
            raise BenchConfigError(f"options: {err}") from None
        if not canonical:
            raise BenchConfigError(f"options: give at least one set ({NONE} for none)")
        object.__setattr__(self, "options", canonical)
        for name in ("min_energy_window_s", "idle_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise BenchConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.build_on not in BUILD_ON:
            raise BenchConfigError(f"build_on must be one of {', '.join(BUILD_ON)}, got {self.build_on!r}")
        if self.threads is not None and self.threads < 1:
            raise BenchConfigError(f"threads must be >= 1, got {self.threads}")
        if not self.sample_interval_s > 0:
            raise BenchConfigError(f"sample_interval_s must be > 0, got {self.sample_interval_s}")

    def overriding(self, **given: Any) -> SweepSpec:
        """This spec with the fields in `given` replaced; a None value keeps this spec's (an unset flag)."""
        changes: dict[str, Any] = {name: tuple(value) if isinstance(value, list) else value
                                   for name, value in given.items() if value is not None}
        return replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The measurement settings stored with each record (what shaped the numbers, not which cell)."""
        return {"seed": self.seed, "policy": asdict(self.policy), "noise": asdict(self.noise), "paired": self.paired,
                "min_energy_window_s": self.min_energy_window_s,
                "sample_interval_s": self.sample_interval_s, "idle_s": self.idle_s, "cooldown_s": self.cooldown_s,
                "torch_num_threads": torch.get_num_threads(), "build_on": self.build_on}


def _ordered(values: Sequence[str], order: Sequence[str]) -> list[str]:
    return [v for v in order if v in values]


def _decode_axes(spec: SweepSpec, workload: str, backend: str) -> list[tuple[int, str]]:
    """(new_tokens, options) of a workload's cells: decode's axes (stock: the options it can run), else one."""
    if workload != "decode":
        return [(0, "")]
    options = dict.fromkeys(stock_options(o) if backend == "stock" else o for o in spec.options)
    return [(new, option) for option in options for new in dict.fromkeys(spec.new_tokens)]


def plan_cells(spec: SweepSpec) -> list[Cell]:
    """Every cell of the sweep, in run order: per model and dtype, stock then each backend; prefill and decode
    before training (whose steps change the weights). A cell longer than its model's max_position_embeddings
    is refused (BenchConfigError naming the limit) unless the spec allows it; then the cell says so."""
    device = str(resolve_device(spec.device))
    dtypes = list(dict.fromkeys(baseline_precision(p) for p in spec.precisions))
    cells: list[Cell] = []
    for model in dict.fromkeys(spec.models):
        for dtype in dtypes:
            precisions = [p for p in dict.fromkeys(spec.precisions) if baseline_precision(p) == dtype]
            for backend in _ordered(spec.backends, BACKENDS):
                for workload in _ordered(spec.workloads, WORKLOADS):
                    for precision in ([dtype] if backend == "stock" else precisions):
                        cells.extend(
                            Cell(model=model, workload=workload, backend=backend, precision=precision,
                                 seq_len=seq_len, batch=batch, device=device, new_tokens=new, options=option)
                            for new, option in _decode_axes(spec, workload, backend)
                            for seq_len in dict.fromkeys(spec.seq_lens) for batch in dict.fromkeys(spec.batches)
                        )
    return _within_positions(cells, spec)


def _within_positions(cells: list[Cell], spec: SweepSpec) -> list[Cell]:
    """The cells, each within its model's positions, or marked beyond them when the spec allows it."""
    from teswap.swap.sources import resolve_source

    configs = {model: resolve_source(model).config for model in dict.fromkeys(c.model for c in cells)}
    checked = []
    for cell in cells:
        decode = f" + new_tokens {cell.new_tokens}" if cell.workload == "decode" else ""
        refusal = beyond_limit(configs[cell.model], cell.positions, model=cell.model,
                               what=f"{cell.workload} seq_len {cell.seq_len}{decode}")
        if refusal and not spec.beyond_max_positions:
            raise BenchConfigError(refusal)
        checked.append(replace(cell, beyond_max_positions=True) if refusal else cell)
    return checked


def default_spec(device: torch.device, te_available: bool) -> tuple[SweepSpec, str]:
    """This hardware's sweep, and why. CPU: the tiny preset at short lengths, prefill and training (well under
    a minute; `--workloads decode` adds decode, 16 new tokens a prompt). GPU: an 8B shape, 512…8192 tokens,
    bf16 and every FP8 recipe, every workload, 128 new tokens a decode, with and without CUDA graphs."""
    if device.type == "cpu":
        spec = SweepSpec(
            models=("tiny",), workloads=CPU_WORKLOADS, backends=("stock", "torch"), precisions=("fp32",),
            seq_lens=(32, 64, 128), batches=(2,), device=str(device), new_tokens=(16,),
            policy=TimingPolicy(warmup=3, min_samples=10, target_rel_ci=0.02, budget_s=0.75, block_steps=2,
                                min_rounds=6),
            # One intra-op thread: with OpenMP's barriers, a core taken by another process stalls every
            # parallel op, and on shared 2-core machines multi-thread timings swing by 10-100x.
            min_energy_window_s=0.0, idle_s=0.0, threads=1, build_on="host",
        )
        return spec, "CPU defaults: the tiny preset at short lengths, one thread (a busy core stalls OpenMP's barriers)"
    swapped = "te" if te_available else "torch"
    spec = SweepSpec(
        models=("llama3-8b",), workloads=WORKLOADS, backends=("stock", swapped),
        precisions=("bf16", *(name for name, p in PRECISIONS.items() if p.is_fp8)),
        seq_lens=(512, 1024, 2048, 4096, 8192), batches=(1,), device=str(device),
        new_tokens=(128,), options=("", "cuda-graphs"),
        policy=TimingPolicy(warmup=5, min_samples=10, target_rel_ci=0.01, budget_s=10.0, block_steps=1,
                            min_rounds=6),
        min_energy_window_s=5.0, idle_s=5.0, threads=None, build_on="device",
    )
    return spec, f"GPU defaults: the llama3-8b shape, {swapped} backend" + (
        "" if te_available else " (te unavailable)")


def _join(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values)


def describe(spec: SweepSpec) -> str:
    """The sweep in one line, as it will run (every flag applied), e.g. for a command's header."""
    swapped = [b for b in spec.backends if b != "stock"]
    backends = f"stock vs {_join(swapped)}" if "stock" in spec.backends and swapped else _join(spec.backends)
    threads = spec.threads if spec.threads is not None else torch.get_num_threads()
    rounds = "ABBA rounds" if spec.policy.order == "abba" else "randomised rounds"
    pairing = (f"each swapped cell paired with stock in {rounds} of {spec.policy.block_steps}-step blocks"
               if spec.paired and "stock" in spec.backends and swapped else "each cell timed on its own")
    decode = ""
    if "decode" in spec.workloads:
        sets = [" + ".join(option_names(o)) or NONE for o in spec.options]
        decode = f"; decode: {_join(spec.new_tokens)} new tokens, options {_join(sets)}"
    return (f"{_join(spec.models)}; {_join(spec.workloads)}; {backends}; {_join(spec.precisions)}; "
            f"seq {_join(spec.seq_lens)} x batch {_join(spec.batches)}{decode}; {spec.device}, {threads} "
            f"thread{'s' if threads != 1 else ''}{'' if spec.threads is not None else ' (torch default)'}; {pairing}")

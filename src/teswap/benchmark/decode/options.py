"""Which decode cells cannot run, and why: speed options a backend or device lacks, TE's FP8 row rule.

A cell that cannot run is recorded as skipped with the reason (never run some other way):

- cuda-graphs needs a CUDA device (on a CPU there is no graph to replay);
- fp8-weights is TE's quantized_model_init: the te backend only, and an FP8 precision to quantize with;
- cuda-graphs on the torch backend compiles the step, which its FP8 emulation refuses (torch.compile);
- TE's FP8 GEMMs need the product of the leading dims divisible by 8 (transformer_engine/pytorch/
  utils.py, assert_dim_for_fp8_exec); a decode forward has `batch` rows, so FP8 decode on te needs a
  batch that is a multiple of 8 (te_gemma generates at batch 64).
"""

from __future__ import annotations

from typing import Protocol

from teswap.precision.table import get_precision
from teswap.speed_options import option_names

TE_FP8_ROWS = 8


class CellSettings(Protocol):
    """What the rules read of a cell (plan.Cell has these; plan imports workloads, which imports us)."""

    @property
    def workload(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def batch(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def options(self) -> str: ...


def option_reason(*, backend: str, precision: str, options: str, batch: int) -> str | None:
    """Why a decode step with these settings can never run (on any machine), or None."""
    names = option_names(options)
    fp8 = get_precision(precision).is_fp8
    if "fp8-weights" in names:
        if backend != "te":
            return (f"fp8-weights is TE's quantized_model_init (te backend only); the {backend} backend keeps "
                    f"{'the model dtype' if backend == 'stock' else 'bf16 weights'}")
        if not fp8:
            return f"fp8-weights needs an FP8 precision to quantize the weights with; this cell is {precision}"
    if "cuda-graphs" in names and backend == "torch" and fp8:
        return "cuda-graphs on the torch backend compiles the decode step, which its FP8 emulation refuses"
    if backend == "te" and fp8 and batch % TE_FP8_ROWS:
        return (f"TE's FP8 GEMMs need the rows of each GEMM divisible by {TE_FP8_ROWS} (assert_dim_for_fp8_exec); "
                f"a decode step has batch = {batch} rows: use a batch that is a multiple of {TE_FP8_ROWS}")
    return None


def decode_skip_reason(cell: CellSettings) -> str | None:
    """Why `cell` cannot run here (None for non-decode cells and for cells that can)."""
    if cell.workload != "decode":
        return None
    if "cuda-graphs" in option_names(cell.options) and not cell.device.startswith("cuda"):
        return f"cuda-graphs needs a CUDA device; this cell runs on {cell.device}"
    return option_reason(backend=cell.backend, precision=cell.precision, options=cell.options, batch=cell.batch)

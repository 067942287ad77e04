"""`teswap run`: pick the best setup for this machine, build the pair, check logits parity."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from teswap.backends import get_backend
from teswap.errors import TeswapError
from teswap.pair import Pair, build_pair
from teswap.sources import resolve_source

DTYPE_BY_NAME = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    model: str
    backend: str
    dtype: str
    device: str
    seq_len: int
    batch: int
    seed: int
    fuse_qkv: bool
    why: str  # what was picked by default, and why

    def describe(self) -> str:
        return (f"model={self.model} backend={self.backend} dtype={self.dtype} device={self.device} "
                f"seq_len={self.seq_len} batch={self.batch} ({self.why})")


def choose_run_options(*, model: str | None, backend: str | None, dtype: str | None, device: str | None,
                       seq_len: int, batch: int, seed: int, fuse_qkv: bool) -> RunOptions:
    """Defaults by hardware (tiny/torch/fp32 on CPU; a real shape/bf16 on GPU); flags override."""
    cuda = torch.cuda.is_available()
    reasons = []
    if device is None:
        device = "cuda" if cuda else "cpu"
        reasons.append("CUDA present" if cuda else "no CUDA device")
    on_gpu = device.startswith("cuda")
    if backend is None:
        te = get_backend("te").probe()
        backend = "te" if on_gpu and te else "torch"
        if on_gpu and not te:
            reasons.append(f"te unavailable ({te.reason})")
    if model is None:
        model = "llama3.2-1b" if on_gpu else "tiny"
    if dtype is None:
        dtype = "bf16" if on_gpu else "fp32"
    resolve_source(model)  # fail early with one clear line on a bad name or directory
    get_backend(backend).require()
    return RunOptions(model=model, backend=backend, dtype=dtype, device=device, seq_len=seq_len, batch=batch,
                      seed=seed, fuse_qkv=fuse_qkv, why="; ".join(reasons) or "as given")


@dataclass(frozen=True, kw_only=True)
class ParityResult:
    """Logits errors of stock and swapped against a reference, and the verdict."""

    dtype: str
    swapped_rel: float  # max |swapped - ref| / max |ref|
    stock_rel: float  # max |stock - ref| / max |ref|; 0 when ref is the stock model itself
    bound: float
    passed: bool

    def table(self) -> str:
        rows = [("metric", "value", "bound", "ok"),
                ("swapped vs ref, rel max err", f"{self.swapped_rel:.3e}", f"{self.bound:.3e}",
                 "pass" if self.passed else "FAIL"),
                ("stock vs ref, rel max err", f"{self.stock_rel:.3e}", "", "")]
        return "\n".join(f"{a:<30} {b:>12} {c:>12} {d:>5}" for a, b, c, d in rows)


def run_parity(options: RunOptions) -> ParityResult:
    """Build the pair at options.dtype and compare logits; low precision is judged against fp32 stock."""
    dtype = DTYPE_BY_NAME[options.dtype]
    pair = build_pair(options.model, seed=options.seed, backend=options.backend, dtype=dtype,
                      device=options.device, fuse_qkv=options.fuse_qkv)
    if not pair.weights_equal:
        raise TeswapError("stock and swapped weights differ after the copy; refusing to compare")
    ids = _input_ids(pair, options)
    stock, swapped = _logits(pair.stock, ids), _logits(pair.swapped, ids)
    if dtype == torch.float32:  # TE's fp32 rtol is 1.3e-6 per op; a whole model stays within 1e-5
        ref, bound = stock, 1e-5
        return _result(options.dtype, swapped, stock, ref, bound_for=lambda _: bound)
    ref = _logits(copy.deepcopy(pair.stock).to(dtype=torch.float32), ids)  # type: ignore[call-arg]  # same (low-precision-cast) weights, fp32 math
    # No worse than the stock model at this precision, by 2x plus half a bf16 ulp of slack.
    return _result(options.dtype, swapped, stock, ref, bound_for=lambda stock_rel: 2 * stock_rel + 2**-9)


def _input_ids(pair: Pair, options: RunOptions) -> torch.Tensor:
    generator = torch.Generator().manual_seed(options.seed)
    ids = torch.randint(0, pair.config.vocab_size, (options.batch, options.seq_len), generator=generator)
    return ids.to(pair.device)


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits.double()


def _result(dtype: str, swapped: torch.Tensor, stock: torch.Tensor, ref: torch.Tensor, *, bound_for) -> ParityResult:
    scale = ref.abs().max().clamp_min(1e-30)
    swapped_rel = float((swapped - ref).abs().max() / scale)
    stock_rel = float((stock - ref).abs().max() / scale)
    bound = float(bound_for(stock_rel))
    return ParityResult(dtype=dtype, swapped_rel=swapped_rel, stock_rel=stock_rel, bound=bound,
                        passed=swapped_rel <= bound)

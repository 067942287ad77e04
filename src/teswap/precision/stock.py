"""Run the STOCK model's decoder-layer GEMMs in FP8 too, so "stock at the same precision" exists.

A policy judges the swapped model against the stock model at the same precision. For FP8 the stock
HF model has no FP8 path of its own, so each nn.Linear inside its decoder layers (q/k/v/o, gate/up/
down) is routed through a GemmSite for as long as this context is open: the same per-tensor FP8
recipe emulation the `torch` backend uses, applied to HF's unfused GEMMs. That is the model a user
would get by quantizing HF's linears per tensor; it is the fair baseline for TE's fused FP8 GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

import torch
from torch import nn

from teswap.precision.emulation import fp8_autocast
from teswap.precision.gemm import GemmSite
from teswap.precision.recipes import RECIPES
from teswap.precision.table import get_precision

_SITE_ATTR = "_teswap_fp8_site"  # the GemmSite lives on the module so delayed-scaling state persists


def _decoder_linears(model: nn.Module) -> list[nn.Linear]:
    layers = getattr(model, "base_model", model).get_submodule("layers")
    return [m for m in layers.modules() if isinstance(m, nn.Linear)]


@contextmanager
def stock_linears_as_gemm_sites(model: nn.Module) -> Iterator[None]:
    """Route every decoder-layer nn.Linear of `model` through its own GemmSite; restore on exit."""
    patched = []
    try:
        for linear in _decoder_linears(model):
            site = linear.__dict__.get(_SITE_ATTR) or GemmSite(type(linear).__name__)
            linear.__dict__[_SITE_ATTR] = site
            linear.forward = _site_forward(linear, site)  # type: ignore[method-assign]  # shadows the class method
            patched.append(linear)
        yield
    finally:
        for linear in patched:
            del linear.forward


def _site_forward(linear: nn.Linear, site: GemmSite):
    def forward(inp: torch.Tensor) -> torch.Tensor:
        out = site(inp, linear.weight)
        return out if linear.bias is None else out + linear.bias

    return forward


def stock_autocast(model: nn.Module, name: str) -> Callable[[], AbstractContextManager]:
    """A factory of the context `model` (stock) runs in at precision `name`: a no-op without FP8; with
    FP8 its decoder-layer linears as GemmSites under the same recipe emulation the torch backend uses."""
    if not get_precision(name).is_fp8:
        return nullcontext

    def context() -> AbstractContextManager:
        stack = ExitStack()
        stack.enter_context(stock_linears_as_gemm_sites(model))
        stack.enter_context(fp8_autocast(RECIPES[name]()))
        return stack

    return context

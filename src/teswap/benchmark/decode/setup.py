"""A decode cell's step: its cache kind and speed options applied (steps.py, ../te_speed.py).

    backend   no options              cuda-graphs                                    + fp8-weights
    stock     DynamicCache            StaticCache, compiled one-token forward        -
    torch     DynamicCache            StaticCache, compiled one-token forward        -
    te        TE cache (TEKVCache)    TE cache, TE graph of the decode step          FP8-only copy of the model

The prompt's KV cache holds seq_len + new_tokens tokens. FP8 DelayedScaling is calibrated on the
prompt first (as prefill cells are), so its scales are not the initial 1.0; an FP8-weight copy takes
the calibrated scales with the weights, and the bf16 model it was made from waits in host memory until
the cell is over (`DecodeStep.close`), so the cell's memory is the FP8 model's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager

import torch

from teswap.benchmark.decode.options import option_reason
from teswap.benchmark.decode.steps import Compiler, Decoder, DecodeStep, HFCacheDecoder, reduce_overhead
from teswap.errors import UnsupportedConfigError
from teswap.precision.runtime import calibrate
from teswap.speed_options import option_names


def prepare_decode(model: torch.nn.Module, input_ids: torch.Tensor, *, backend: str, precision: str,
                   new_tokens: int, options: str, autocast: Callable[[], ContextManager[None]],
                   compiler: Compiler = reduce_overhead) -> DecodeStep:
    """The decode step of a cell on `model` (eval), options applied; `compiler` compiles stock/torch graphs."""
    reason = option_reason(backend=backend, precision=precision, options=options, batch=input_ids.shape[0])
    if reason:
        raise UnsupportedConfigError(reason)
    model.eval()
    if backend != "stock":
        calibrate(model, input_ids, precision, autocast)
    names = option_names(options)
    on_close: Callable[[], None] | None = None
    if "fp8-weights" in names:
        from teswap.benchmark.te_speed import fp8_weight_model

        source, device = model, input_ids.device
        model = fp8_weight_model(source, precision)
        source.to("cpu")

        def on_close() -> None:  # the bf16 model comes back when the cell is over
            source.to(device)

    capacity = input_ids.shape[1] + new_tokens
    decoder = _decoder(model, input_ids, backend=backend, precision=precision, capacity=capacity,
                       graphs="cuda-graphs" in names, compiler=compiler, autocast=autocast)
    return DecodeStep(model=model, input_ids=input_ids, new_tokens=new_tokens, autocast=autocast, decoder=decoder,
                      options=options, on_close=on_close)


def _decoder(model: torch.nn.Module, input_ids: torch.Tensor, *, backend: str, precision: str, capacity: int,
             graphs: bool, compiler: Compiler, autocast: Callable[[], ContextManager[None]]) -> Decoder:
    if backend == "te":
        if not graphs:
            return HFCacheDecoder(model, cache_kind="te", capacity=capacity)
        from teswap.benchmark.te_speed import TEGraphDecoder

        with autocast():  # the graph is recorded on a real prefill, which runs at the cell's precision
            return TEGraphDecoder(model, capacity=capacity, precision=precision, prompt=input_ids)
    if graphs:
        return HFCacheDecoder(model, cache_kind="static", capacity=capacity, compiler=compiler)
    return HFCacheDecoder(model, cache_kind="dynamic", capacity=capacity)

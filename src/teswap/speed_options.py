"""Decode speed options: the named settings a decode cell can run with, written down once.

    cuda-graphs   the one-token decode step replayed as a CUDA graph (stock and torch: a StaticCache and
                  torch.compile(mode="reduce-overhead"); te: TE's make_graphed_callables)
    fp8-weights   te only: FP8-only weights (TE's quantized_model_init), quantized with the cell's FP8 recipe

A cell's `options` is the set joined with "+" in the order above ("cuda-graphs+fp8-weights"), or ""
for none ("none" on the command line). Options are part of a cell's identity, so resumed sweeps and
reports keep `te bf16` and `te bf16 +cuda-graphs` apart. A swapped cell's stock baseline takes the
options stock can run too (`stock_options`): te with graphs is paired with stock with graphs, so the
ladder HF -> TE -> +graphs -> +FP8 weights reads down the rows of one shape.
"""

from __future__ import annotations

OPTIONS: dict[str, str] = {
    "cuda-graphs": "decode step replayed as a CUDA graph (static KV cache)",
    "fp8-weights": "FP8-only weights via TE's quantized_model_init (te backend, FP8 precisions)",
}
STOCK_OPTIONS = ("cuda-graphs",)  # what the stock HF model can run too
NONE = "none"  # how the command line says "no options"
SEPARATOR = "+"


def option_names(options: str) -> tuple[str, ...]:
    """The options of a canonical set, in OPTIONS order ("" -> ())."""
    return tuple(name for name in options.split(SEPARATOR) if name)


def parse_options(text: str) -> str:
    """A set as typed ("none", "fp8-weights+cuda-graphs") in canonical form; ValueError naming unknown ones."""
    names = [part.strip() for part in text.split(SEPARATOR) if part.strip() and part.strip() != NONE]
    unknown = [name for name in names if name not in OPTIONS]
    if unknown:
        raise ValueError(f"unknown speed option {', '.join(map(repr, unknown))}; choose from {NONE}, "
                         + ", ".join(OPTIONS) + f" (combine with {SEPARATOR!r})")
    return SEPARATOR.join(name for name in OPTIONS if name in names)


def stock_options(options: str) -> str:
    """The part of a swapped cell's options its stock baseline runs with."""
    return SEPARATOR.join(name for name in option_names(options) if name in STOCK_OPTIONS)


def options_label(options: str) -> str:
    """How tables show a set: "" for none, else "+cuda-graphs+fp8-weights"."""
    return "".join(f"{SEPARATOR}{name}" for name in option_names(options))

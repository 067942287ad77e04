"""The decode workload: a prompt's prefill, then exactly N new tokens over the KV cache, each token timed.

One step is one generation, greedy and forced: the prefill over the prompt (seq_len tokens a row)
gives token 1, then N - 1 forwards of one token each over the cache give tokens 2..N. No stopping
criterion runs, so N tokens come out whatever they are (EOS included), and only the model's forward
and an argmax run per token: HF generate()'s logits processors and stopping checks are not timed. A
token clock (Timer.token_clock: CUDA events on a GPU, the host clock on a CPU) marks when each token
exists; `timed()` returns the phases of metrics.py, and the paired rounds give each a ratio and
a CI. The cache is reset before the clock starts, so its zeroing is not in TTFT.

Caches (the same kind on both sides of a pair):
    dynamic  HF's DynamicCache, new for every generation                    stock, torch
    static   HF's StaticCache, allocated once, reset in place               stock, torch with cuda-graphs
    te       TE's InferenceParams behind HF's Cache (layers/te_cache.py),   te (with cuda-graphs, its decode
             allocated once, reset                                            step is a TE graph: te_speed.py)
With cuda-graphs, stock and torch compile the one-token forward with torch.compile(mode="reduce-overhead",
fullgraph=True), as HF's static-cache generation and gpt-fast do; the prefill stays eager.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, StaticCache

from teswap.benchmark.decode.metrics import PHASES, SERIES, decode_summary, step_timings
from teswap.benchmark.decode.token_clock import TokenClock
from teswap.benchmark.timing import STEP_TIME, StepTimings, Timer
from teswap.layers.hf_inputs import cache_kwarg
from teswap.layers.te_cache import TEKVCache

CACHE_KINDS = ("dynamic", "static", "te")
Compiler = Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]


def reduce_overhead(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """torch.compile with CUDA graphs (mode="reduce-overhead") and no graph breaks allowed."""
    return torch.compile(function, mode="reduce-overhead", fullgraph=True)


class Decoder(ABC):
    """One generation's forwards: `reset` (untimed), `begin` (the prefill), `next` (one token)."""

    cache_kind: str

    @abstractmethod
    def reset(self) -> None:
        """An empty cache for the next generation."""

    @abstractmethod
    def begin(self, prompt: torch.Tensor) -> torch.Tensor:
        """The prefill of `prompt` [b, s] into the cache; the first token [b, 1]."""

    @abstractmethod
    def next(self, token: torch.Tensor) -> torch.Tensor:
        """One forward of `token` [b, 1] over the cache; the next token [b, 1]."""

    def tensors(self) -> Iterator[torch.Tensor]:
        """What it keeps between generations (cache buffers), for the memory count."""
        return iter(())

    @abstractmethod
    def release(self) -> None:
        """Drop what it keeps; the next `reset` makes it again."""


class HFCacheDecoder(Decoder):
    """The model's own HF forward over an HF Cache, position_ids passed explicitly and advanced in place."""

    def __init__(self, model: torch.nn.Module, *, cache_kind: str, capacity: int,
                 compiler: Compiler | None = None) -> None:
        if cache_kind not in CACHE_KINDS:
            raise ValueError(f"cache_kind must be one of {CACHE_KINDS}, got {cache_kind!r}")
        self.model, self.cache_kind, self.capacity = model, cache_kind, capacity
        self.cache: Any = None
        self.compiled = compiler is not None
        self._cache_arg = cache_kwarg(model.forward)
        # transformers 5.17 builds masks and static-cache slots from cache_position; 5.2x from the cache itself
        self._cache_position = "cache_position" in inspect.signature(model.forward).parameters
        self._position: torch.Tensor | None = None
        self._one = compiler(self._forward_one) if compiler is not None else self._forward_one

    def _new_cache(self) -> Any:
        config: Any = self.model.config
        if self.cache_kind == "dynamic":
            return DynamicCache(config=config)
        if self.cache_kind == "static":
            return StaticCache(config=config, max_cache_len=self.capacity)
        return TEKVCache(config, max_sequence_length=self.capacity)

    def reset(self) -> None:
        if self.cache is None or self.cache_kind == "dynamic":
            self.cache = self._new_cache()
        else:
            self.cache.reset()  # in place: a CUDA graph keeps pointing at the same buffers

    def begin(self, prompt: torch.Tensor) -> torch.Tensor:
        length = prompt.shape[1]
        positions = torch.arange(length, device=prompt.device)[None]
        logits = self.model(prompt, position_ids=positions, use_cache=True, logits_to_keep=1,
                            **self._cache_kwargs(positions[0])).logits
        if self._position is None or self._position.device != prompt.device:
            self._position = torch.zeros(1, 1, dtype=torch.long, device=prompt.device)
        self._position.fill_(length)
        return logits[:, -1:].argmax(-1)

    def next(self, token: torch.Tensor) -> torch.Tensor:
        assert self._position is not None, "begin() first"
        token = self._one(token, self._position)
        if self.compiled:
            token = token.clone()  # a CUDA graph's output is overwritten by its next replay
        self._position.add_(1)
        return token

    def _forward_one(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        logits = self.model(token, position_ids=position, use_cache=True, logits_to_keep=1,
                            **self._cache_kwargs(position[0])).logits
        return logits[:, -1:].argmax(-1)

    def _cache_kwargs(self, cache_position: torch.Tensor) -> dict[str, Any]:
        kwargs = {self._cache_arg: self.cache}
        if self._cache_position:
            kwargs["cache_position"] = cache_position
        return kwargs

    def tensors(self) -> Iterator[torch.Tensor]:
        for layer in getattr(self.cache, "layers", None) or ():
            yield from (t for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                        if isinstance(t, torch.Tensor))

    def release(self) -> None:
        self.cache = None


@dataclass(kw_only=True)
class DecodeStep:
    """One forced greedy generation of `new_tokens` tokens after `input_ids` (the prompt); call it to run one."""

    model: torch.nn.Module
    input_ids: torch.Tensor
    new_tokens: int
    autocast: Callable[[], ContextManager[None]]
    decoder: Decoder
    options: str = ""
    workload: str = "decode"
    optimizer: None = None  # nothing to train; what drop_state and release look for
    on_close: Callable[[], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.new_tokens < 2:
            raise ValueError(f"decode needs at least 2 new tokens (TPOT divides by N - 1), got {self.new_tokens}")

    @property
    def tokens_per_step(self) -> int:
        """Output tokens per generation: batch x new_tokens (what tokens/s and energy per token count)."""
        return self.input_ids.shape[0] * self.new_tokens

    def __call__(self) -> torch.Tensor:
        """One untimed generation; the new tokens [b, new_tokens]."""
        return self._generate(None)

    def timed(self, timer: Timer) -> StepTimings:
        """One generation with each token marked on `timer`'s clock: its decode timings."""
        clock = timer.token_clock()
        self._generate(clock)
        return step_timings(clock.read())

    def _generate(self, clock: TokenClock | None) -> torch.Tensor:
        tokens = []
        with torch.no_grad(), self.autocast():
            self.decoder.reset()
            if clock is not None:
                clock.start()
            token = self.decoder.begin(self.input_ids)
            for index in range(self.new_tokens):
                if index:
                    token = self.decoder.next(token)
                if clock is not None:
                    clock.mark()
                tokens.append(token)
        return torch.cat(tokens, dim=1)

    def summarize(self, timings: Mapping[str, Sequence[Any]]) -> tuple[dict[str, float], dict[str, Any]]:
        """The cell's decode metrics and the record's "decode" field from its timed generations' timings."""
        metrics = decode_summary(timings, batch=self.input_ids.shape[0], new_tokens=self.new_tokens)
        field_ = {"prompt_tokens": self.input_ids.shape[1], "new_tokens": self.new_tokens,
                  "batch": self.input_ids.shape[0], "cache": self.decoder.cache_kind, "options": self.options,
                  "sampling": "greedy, exactly new_tokens forced (no stopping criterion)",
                  "generations": len(timings[STEP_TIME]),
                  **{name: list(timings[name]) for name in PHASES}, SERIES: [list(s) for s in timings[SERIES]]}
        return metrics, field_

    def resident_tensors(self) -> Iterator[torch.Tensor]:
        """What lives across steps: parameters, buffers, the prompt and the decoder's cache buffers."""
        yield from self.model.parameters()
        yield from self.model.buffers()
        yield self.input_ids
        yield from self.decoder.tensors()

    def drop_state(self) -> None:
        """Free the cache (made again by the next generation)."""
        self.decoder.release()

    def close(self) -> None:
        """The cell is over: free the cache and undo what preparing the step changed."""
        self.decoder.release()
        if self.on_close is not None:
            self.on_close()
            self.on_close = None

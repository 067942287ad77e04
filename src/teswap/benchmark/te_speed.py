"""The TransformerEngine calls of the decode speed options, in one place, with the TE versions they need.

    make_graphed_callables  in transformer_engine.pytorch since TE 2.0; graphing a KV-cached decode step
                            needs InferenceParams.pre_step (TE >= 2.2). Its FP8 arguments are `enabled` /
                            `recipe` from TE 2.9 and `fp8_enabled` / `fp8_recipe` before (deprecated, still
                            accepted, since): picked from its signature.
    quantized_model_init    TE >= 2.9; `fp8_model_init` before it (TE 2.0 - 2.8, a deprecated alias since),
                            with the same (enabled, recipe) arguments.
    te_recipe               teswap.precision.te_glue: the cell's recipe with teswap's settings.

The graphed decode step follows TE's te_gemma example (docs/examples/te_gemma/te_gemma.py,
TEGemmaForCausalLMCudaGraphs): a module runs every TE layer on a static [b, 1, h] buffer (mask type
"padding", TE's InferenceParams, one RoPE table from position 0 that TE offsets per row), then the
final norm, lm_head and argmax, and writes the next token's embedding back into the buffer, so a
replay needs no new input. It is graphed in eval mode (TE then captures forward graphs only) under
no_grad. Between replays `InferenceParams.pre_step` runs on the host: it copies the new lengths into
fixed device buffers, which is what makes it graph-safe. The prefill runs eagerly through the model's
HF forward into the same TE cache (layers/te_cache.TEKVCache). FP8-only weights follow te_gemma's
loading (te_gemma_loading_weights.py): the model is built under quantized_model_init with fused QKV
(FP8-only weights need it), then the calibrated bf16 model's weights and FP8 metadata are loaded.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from teswap.benchmark.decode.steps import Decoder, HFCacheDecoder
from teswap.errors import MappingError, UnsupportedConfigError
from teswap.families import family_for_config
from teswap.layers.backends import get_backend
from teswap.layers.plan import TRANSFORMER_LAYER
from teswap.layers.rope import bind_rope
from teswap.precision.table import get_precision
from teswap.swap.mapping import hf_to_te_state_dict, te_to_hf_state_dict
from teswap.swap.metadata import finish_swapped_model, prepare_swapped_config
from teswap.swap.replace import replace_decoder

GRAPH_WARMUP_ITERS = 3  # make_graphed_callables' default; te_gemma uses 5


def _te() -> Any:
    import transformer_engine.pytorch as te

    return te


class TEDecodePhase(nn.Module):
    """te_gemma's generation phase over a swapped model: TE layers, norm, lm_head, argmax, next embedding."""

    def __init__(self, te: Any, model: nn.Module, inference_params: Any, freqs: torch.Tensor) -> None:
        super().__init__()
        self.model = model  # registered: its parameters are part of the graph's static inputs
        self._te, self._params, self._freqs = te, inference_params, freqs

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        model: Any = self.model
        base = model.model
        states = hidden
        for layer in base.layers:
            states = self._te.TransformerLayer.forward(layer, states, self_attn_mask_type="padding",
                                                       rotary_pos_emb=self._freqs, inference_params=self._params)
        token = model.lm_head(base.norm(states))[:, -1].argmax(-1)
        hidden.copy_(base.embed_tokens(token)[:, None])  # the next replay's input, in the static buffer
        return token


def graphed(te: Any, module: nn.Module, sample_args: tuple[torch.Tensor, ...], precision: str) -> Callable:
    """TE's make_graphed_callables over `module`, FP8 per `precision`, with the argument names of this TE."""
    fp8 = get_precision(precision).is_fp8
    recipe = None
    if fp8:
        from teswap.precision.te_glue import te_recipe

        recipe = te_recipe(precision)
    names = inspect.signature(te.make_graphed_callables).parameters
    quantization = {"enabled": fp8, "recipe": recipe} if "enabled" in names else {"fp8_enabled": fp8,
                                                                                "fp8_recipe": recipe}
    with torch.no_grad():
        return te.make_graphed_callables(module, sample_args, num_warmup_iters=GRAPH_WARMUP_ITERS,
                                         allow_unused_input=True, **quantization)


def refuse_graphed_decode(config: Any) -> None:
    """The graphed step loops over TE TransformerLayers and embeds the next token with embed_tokens alone
    (te_gemma's design): a family built as a composite, or whose model scales the embedding, is refused."""
    family = family_for_config(config)
    if family.layout != TRANSFORMER_LAYER or family.scales_embeddings:
        why = "its layers are a composite of TE modules" if family.layout != TRANSFORMER_LAYER else (
            "its model scales the embedding outside embed_tokens")
        raise UnsupportedConfigError(f"cuda-graphs on the te backend is not built for {family.name}: {why} "
                                     "(the graphed decode step runs TransformerLayers on embed_tokens' output)")


class TEGraphDecoder(Decoder):
    """te with cuda-graphs: the prefill eager into TE's cache, each decode token a replay of a TE graph."""

    cache_kind = "te"

    def __init__(self, model: nn.Module, *, capacity: int, precision: str, prompt: torch.Tensor) -> None:
        refuse_graphed_decode(model.config)
        self.model: Any = model
        self.precision = precision
        self.eager = HFCacheDecoder(model, cache_kind="te", capacity=capacity)
        self._buffer: torch.Tensor | None = None
        self._replay: Callable | None = None
        self._record(prompt)

    def _record(self, prompt: torch.Tensor) -> None:
        """Graph the decode step once, on a real prefill (TE allocates its cache there), then start afresh."""
        te = _te()
        self.reset()
        with torch.no_grad():
            first = self.eager.begin(prompt)
            self._buffer = self.model.model.embed_tokens(first).contiguous()
            state = self.eager.cache.state
            state.pre_step(te, [1] * prompt.shape[0], self._buffer)  # one token a row, as every replay
            freqs = self.model.model.layers[0].rope.table(state.capacity, prompt.device)  # one table (refused else)
            phase = TEDecodePhase(te, self.model, state.params, freqs).eval()
            self._replay = graphed(te, phase, (self._buffer,), self.precision)
        self.reset()

    def reset(self) -> None:
        self.eager.reset()

    def begin(self, prompt: torch.Tensor) -> torch.Tensor:
        first = self.eager.begin(prompt)
        assert self._buffer is not None
        self._buffer.copy_(self.model.model.embed_tokens(first))
        return first

    def next(self, token: torch.Tensor) -> torch.Tensor:
        assert self._buffer is not None and self._replay is not None
        self.eager.cache.state.pre_step(_te(), [1] * token.shape[0], self._buffer)
        return self._replay(self._buffer)[:, None].clone()  # the graph's output is overwritten by its next replay

    def tensors(self) -> Iterator[torch.Tensor]:
        yield from self.eager.tensors()  # the TE cache's buffers
        if self._buffer is not None:
            yield self._buffer

    def release(self) -> None:
        self.eager.reset()  # the graph points at this cache's buffers: keep them, empty


def _quantized_init(te: Any) -> Callable[..., Any]:
    """quantized_model_init (TE >= 2.9), else fp8_model_init (TE 2.0 - 2.8): (enabled, recipe)."""
    init = getattr(te, "quantized_model_init", None) or getattr(te, "fp8_model_init", None)
    if init is None:
        raise MappingError("this TransformerEngine has neither quantized_model_init nor fp8_model_init")
    return init


def fp8_weight_model(model: nn.Module, precision: str) -> nn.Module:
    """A copy of the te-swapped `model` (calibrated at `precision`) whose TE layers hold FP8-only weights."""
    from teswap.precision.te_glue import te_recipe

    te = _te()
    source_config: Any = model.config
    config = copy.deepcopy(source_config)
    prepare_swapped_config(config)
    family = family_for_config(config)
    decoder_cls = get_backend("te").decoder_class(family, True)  # FP8-only weights need fused QKV (te_gemma)
    parameter = next(model.parameters())
    with torch.no_grad(), _quantized_init(te)(enabled=True, recipe=te_recipe(precision)), \
            replace_decoder(decoder_cls, family=family.name), torch.device(parameter.device):
        fp8 = family.causal_lm_class()._from_config(config, dtype=parameter.dtype)
    finish_swapped_model(fp8, decoder_cls)
    state = model.state_dict()
    # (a tensor TE holds as 1 + w goes back and forth exactly where 1 + w >= 0.5: te - 1 is exact there)
    mapped = hf_to_te_state_dict(te_to_hf_state_dict(state, source_config), config, fuse_qkv_params=True)
    # te_gemma leaves core attention's extra state out; module names are the same fused or not.
    mapped.update({k: v for k, v in state.items() if k.endswith("_extra_state") and "core_attention" not in k})
    for _ in range(2):  # a module's extra state (FP8 scales) loads after its weights: the 2nd pass quantizes with it
        result = fp8.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise MappingError(f"the FP8-weight model did not take the weights: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
    if config.tie_word_embeddings:
        fp8.tie_weights()
    bind_rope(fp8)
    return fp8.eval()

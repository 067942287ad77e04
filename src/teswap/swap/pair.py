"""`build_pair`: the stock HF model and a TE-swapped copy with identical weights, from one seed."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel

from teswap.errors import MappingError, TeswapError
from teswap.families import family_for_config
from teswap.families.base import Family
from teswap.families.registry import plan_source
from teswap.layers.backends import get_backend
from teswap.layers.rope import bind_rope
from teswap.swap.checkpoint_checks import loading_errors
from teswap.swap.checksum import tensor_checksum
from teswap.swap.mapping import FUSED_QKV, hf_to_te_state_dict
from teswap.swap.metadata import finish_swapped_model, prepare_swapped_config
from teswap.swap.replace import no_swap_active, replace_decoder
from teswap.swap.sources import ResolvedSource, Source, resolve_source


@dataclass(frozen=True, kw_only=True)
class Pair:
    """Stock and swapped causal-LM models (eval mode) and the proof their weights are equal."""

    stock: PreTrainedModel
    swapped: PreTrainedModel
    source: str
    backend: str
    seed: int
    dtype: torch.dtype
    device: torch.device
    fuse_qkv: bool
    experts: str | None = None  # an MoE family's expert implementation ("grouped" or "hf"); None: dense

    @property
    def config(self) -> PretrainedConfig:
        return self.stock.config

    @property
    def family(self) -> str:
        return family_for_config(self.config).name

    @property
    def weights_equal(self) -> bool:
        """Every swapped tensor equals the stock weights mapped to TE's layout, bit for bit, now.

        Compared in TE's layout because one mapping (1 + w, Gemma3's q/k norms) loses low bits going back.
        """
        mapped, swapped = _in_te_layout(self.stock, self.swapped)
        return all(torch.equal(mapped[key], swapped[key]) for key in mapped)

    @functools.cached_property
    def checksums(self) -> dict[str, tuple[str, str]]:
        """TE key -> (checksum of the stock weights mapped there, of the swapped tensor): a printable proof."""
        return weight_checksums(self.stock, self.swapped)


def build_pair(
    source: Source,
    *,
    seed: int = 0,
    backend: str = "torch",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    fuse_qkv: bool = False,
    experts: str | None = None,
) -> Pair:
    """Build stock under `seed`, then the swapped model under `replace_decoder`, then copy weights.

    Without weights (a preset or config), stock is HF's own random init under `seed`, with the
    decoder-layer tensors HF sets to a constant drawn around it (`vary_constant_tensors`). An MoE family's
    swapped layers use the expert implementation `experts` ("grouped", TE's, by default, or "hf").
    """
    resolved = resolve_source(source)
    family = family_for_config(resolved.config)
    family.validate(resolved.config)
    chosen = get_backend(backend)
    chosen.require()
    device = torch.device(device)
    stock = _build_stock(resolved, family, seed=seed, dtype=dtype, device=device)
    decoder_cls = chosen.decoder_class(plan_source(family.name, experts), fuse_qkv)
    swapped = _build_swapped(stock, family, decoder_cls, dtype=dtype, device=device)
    _copy_weights(stock, swapped, fuse_qkv=fuse_qkv)
    bind_rope(swapped)
    return Pair(
        stock=stock.eval(), swapped=swapped.eval(), source=resolved.name, backend=backend, seed=seed,
        dtype=dtype, device=device, fuse_qkv=fuse_qkv, experts=getattr(decoder_cls, "experts", None),
    )


def _build_stock(resolved: ResolvedSource, family: Family, *, seed: int, dtype: torch.dtype,
                 device: torch.device) -> PreTrainedModel:
    """The unmodified HF model: loaded from safetensors when the source has them, else seeded init."""
    module = family.module()
    causal_lm = family.causal_lm_class()
    with no_swap_active():  # no other thread may have the decoder class patched meanwhile
        current = getattr(module, family.hf.decoder)
        if current.__module__ != module.__name__:
            raise TeswapError(
                f"{family.hf.decoder} is currently replaced by {current.__qualname__}: "
                "build_pair must not be called inside replace_decoder"
            )
        torch.manual_seed(seed)
        if resolved.weights_dir is not None:
            # No device_map: that needs `accelerate`; load on the host, then move.
            with loading_errors(f"{resolved.weights_dir}: cannot load the weights"):  # past the header checks
                model = causal_lm.from_pretrained(resolved.weights_dir, dtype=dtype, local_files_only=True)
            return model.to(device)  # type: ignore[arg-type]  # transformers wraps .to
        with torch.device(device):
            model = causal_lm._from_config(copy.deepcopy(resolved.config), dtype=dtype)
        vary_constant_tensors(model, seed=seed)
        return model


def vary_constant_tensors(model: PreTrainedModel, *, seed: int) -> None:
    """Draw the decoder-layer tensors HF initialises to a constant (norm gammas 1 or 0, biases 0) around it.

    A random-weight model with every norm at 1 and every bias at 0 would hide a mapping fault (two norms
    exchanged, a q/k/v bias dropped, w for 1 + w): each constant tensor gets N(0, initializer_range) noise
    from its own seeded generator, so the same seed gives the same weights on every device.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed + 7919)
    std = float(getattr(model.config, "initializer_range", 0.02))
    layers = getattr(model, "base_model", model).get_submodule("layers")
    with torch.no_grad():
        for param in layers.parameters():
            flat = param.detach().reshape(-1)
            if flat.numel() and bool((flat == flat[0]).all()):
                noise = torch.randn(param.shape, generator=generator, dtype=torch.float32) * std
                param.add_(noise.to(device=param.device, dtype=param.dtype))


def _build_swapped(stock: PreTrainedModel, family: Family, decoder_cls: type, *, dtype: torch.dtype,
                   device: torch.device) -> PreTrainedModel:
    config = copy.deepcopy(stock.config)
    config._attn_implementation = "sdpa"  # plain causal batches then pass attention_mask=None
    prepare_swapped_config(config)
    with replace_decoder(decoder_cls, family=family.name), torch.device(device):
        model = family.causal_lm_class()._from_config(config, dtype=dtype)
    finish_swapped_model(model, decoder_cls)
    return model


def _copy_weights(stock: PreTrainedModel, swapped: PreTrainedModel, *, fuse_qkv: bool) -> None:
    """Load the stock weights, mapped to TE layout, into the swapped model; every key must land.

    Mapped by the swapped model's config: it records what the layers were built as (an MoE family's experts)."""
    mapped = hf_to_te_state_dict(stock.state_dict(), swapped.config, fuse_qkv_params=fuse_qkv)
    result = swapped.load_state_dict(mapped, strict=False)
    held_at_zero = tuple(f".{name}" for rule in family_for_config(swapped.config).layer_rules(
        swapped.config, fuse_qkv=fuse_qkv) if not rule.hf for name in rule.te)  # the layers make them
    missing = [k for k in result.missing_keys if not k.endswith(("_extra_state", *held_at_zero))]
    if missing or result.unexpected_keys:
        raise MappingError(f"swapped model did not take the mapped weights: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
    if stock.config.tie_word_embeddings:
        swapped.tie_weights()


def _in_te_layout(stock: PreTrainedModel, swapped: PreTrainedModel) -> tuple[dict, dict]:
    """The stock weights mapped to TE's layout (split or fused QKV, as the swapped model holds it), and
    the swapped model's own tensors (TE-only zero tensors and FP8 metadata aside); the key sets must agree."""
    held = {k: v for k, v in swapped.state_dict().items() if not k.endswith("_extra_state")}
    fused = any(k.endswith(FUSED_QKV) for k in held)
    mapped = hf_to_te_state_dict(stock.state_dict(), swapped.config, fuse_qkv_params=fused)
    extra = held.keys() - mapped.keys()
    frozen = {name for name in extra if not held[name].any()}  # TE-only zero tensors, checked by the mapping
    if mapped.keys() != held.keys() - frozen:
        raise MappingError(f"swapped weights and the stock weights mapped to TE differ in keys: "
                           f"{sorted(mapped.keys() ^ (held.keys() - frozen))}")
    return mapped, held


def weight_checksums(stock: PreTrainedModel, swapped: PreTrainedModel) -> dict[str, tuple[str, str]]:
    """Per TE key, the checksum of the stock weights mapped there and of the swapped model's tensor."""
    mapped, held = _in_te_layout(stock, swapped)
    return {key: (tensor_checksum(mapped[key]), tensor_checksum(held[key])) for key in mapped}

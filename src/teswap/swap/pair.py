"""`build_pair`: the stock HF model and a TE-swapped copy with identical weights, from one seed."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig, PreTrainedModel

from teswap.errors import MappingError, TeswapError
from teswap.layers.backends import get_backend
from teswap.layers.hf_adapter import validate_config
from teswap.layers.rope import bind_rope
from teswap.swap.checkpoint_checks import loading_errors
from teswap.swap.checksum import tensor_checksum
from teswap.swap.families import Family, family_for_config
from teswap.swap.mapping import hf_to_te_state_dict, te_to_hf_state_dict
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

    @property
    def config(self) -> PretrainedConfig:
        return self.stock.config

    @property
    def weights_equal(self) -> bool:
        """Every stock tensor equals the swapped model's tensor mapped back to HF names, bit for bit, now."""
        stock_sd, back = _mapped_back(self.stock, self.swapped)
        return all(torch.equal(stock_sd[key], back[key]) for key in stock_sd)

    @functools.cached_property
    def checksums(self) -> dict[str, tuple[str, str]]:
        """HF key -> (checksum of the stock tensor, of the swapped tensor mapped back): a printable proof."""
        return weight_checksums(self.stock, self.swapped)


def build_pair(
    source: Source,
    *,
    seed: int = 0,
    backend: str = "torch",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    fuse_qkv: bool = False,
) -> Pair:
    """Build stock under `seed`, then the swapped model under `replace_decoder`, then copy weights."""
    resolved = resolve_source(source)
    family = family_for_config(resolved.config)
    validate_config(resolved.config)
    chosen = get_backend(backend)
    chosen.require()
    device = torch.device(device)
    stock = _build_stock(resolved, family, seed=seed, dtype=dtype, device=device)
    swapped = _build_swapped(stock, family, chosen.decoder_class(fuse_qkv), dtype=dtype, device=device)
    _copy_weights(stock, swapped, fuse_qkv=fuse_qkv)
    bind_rope(swapped)
    return Pair(
        stock=stock.eval(), swapped=swapped.eval(), source=resolved.name, backend=backend, seed=seed,
        dtype=dtype, device=device, fuse_qkv=fuse_qkv,
    )


def _build_stock(resolved: ResolvedSource, family: Family, *, seed: int, dtype: torch.dtype,
                 device: torch.device) -> PreTrainedModel:
    """The unmodified HF model: loaded from safetensors when the source has them, else seeded init."""
    module = family.module()
    causal_lm = family.causal_lm_class()
    with no_swap_active():  # no other thread may have the decoder class patched meanwhile
        current = getattr(module, family.decoder_class_name)
        if current.__module__ != module.__name__:
            raise TeswapError(
                f"{family.decoder_class_name} is currently replaced by {current.__qualname__}: "
                "build_pair must not be called inside replace_decoder"
            )
        torch.manual_seed(seed)
        if resolved.weights_dir is not None:
            # No device_map: that needs `accelerate`; load on the host, then move.
            with loading_errors(f"{resolved.weights_dir}: cannot load the weights"):  # past the header checks
                model = causal_lm.from_pretrained(resolved.weights_dir, dtype=dtype, local_files_only=True)
            return model.to(device)  # type: ignore[arg-type]  # transformers wraps .to
        with torch.device(device):
            return causal_lm._from_config(copy.deepcopy(resolved.config), dtype=dtype)


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
    """Load the stock weights, mapped to TE layout, into the swapped model; every key must land."""
    mapped = hf_to_te_state_dict(stock.state_dict(), stock.config, fuse_qkv_params=fuse_qkv)
    result = swapped.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise MappingError(f"swapped model did not take the mapped weights: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
    if stock.config.tie_word_embeddings:
        swapped.tie_weights()


def _mapped_back(stock: PreTrainedModel, swapped: PreTrainedModel) -> tuple[dict, dict]:
    """The stock state dict, and the swapped one mapped back to HF names; the key sets must agree."""
    stock_sd = stock.state_dict()
    back = te_to_hf_state_dict(swapped.state_dict(), swapped.config)
    if back.keys() != stock_sd.keys():
        raise MappingError(f"swapped weights map back to different keys: {sorted(back.keys() ^ stock_sd.keys())}")
    return stock_sd, back


def weight_checksums(stock: PreTrainedModel, swapped: PreTrainedModel) -> dict[str, tuple[str, str]]:
    """Per HF key, the checksum of the stock tensor and of the swapped model's tensor mapped back."""
    stock_sd, back = _mapped_back(stock, swapped)
    return {key: (tensor_checksum(stock_sd[key]), tensor_checksum(back[key])) for key in stock_sd}

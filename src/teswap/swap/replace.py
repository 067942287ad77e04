"""`replace_decoder`: the scoped swap of a family's decoder-layer class (TE's te_llama pattern)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from teswap.errors import TeswapError
from teswap.families import get_family
from teswap.swap.loading import conversions_registered
from teswap.swap.metadata import finish_swapped_model

# The patch is process-global (module and class attributes), so one lock serialises every patch and
# every stock build that must not see one. Re-entrant: nested swaps in one thread are allowed and each
# level restores what it found.
SWAP_LOCK = threading.RLock()


def family_of(te_decoder_cls: type, family: str | None) -> str:
    """The family a swap is for: as given, else the class's own (teswap's classes carry it), else llama."""
    own = getattr(te_decoder_cls, "family", None)
    if family is not None:
        get_family(family)  # an unknown name is refused as such first
    if family is not None and own is not None and own != family:
        raise TeswapError(f"{te_decoder_cls.__name__} is a {own} decoder layer, not a {family} one: "
                          f"pass teswap.decoder_class({family!r}, ...)")
    return family or own or "llama"


@contextmanager
def replace_decoder(te_decoder_cls: type, family: str | None = None) -> Iterator[None]:
    """Make models of `family` built inside the block use `te_decoder_cls`; always restore.

    Two things are patched while the block runs: the family's decoder-layer class in its modeling
    module (looked up as a module global when a base model builds its layers), and `post_init` of the
    family's PreTrainedModel, so that every model of the family built in the block (the base model or
    any head, whatever name its class was imported by) gets HF metadata that names the new decoder
    class (`swap.metadata`): output_hidden_states and device_map then see the swapped layers.
    """
    fam = get_family(family_of(te_decoder_cls, family))
    module = fam.module()
    pretrained = getattr(module, fam.hf.pretrained)
    fused = bool(getattr(te_decoder_cls, "fuse_qkv_params", False))
    with SWAP_LOCK:
        original = getattr(module, fam.hf.decoder)
        own_post_init = pretrained.__dict__.get("post_init")
        inherited = pretrained.post_init

        def post_init(self) -> None:  # type: ignore[no-untyped-def]
            inherited(self)
            finish_swapped_model(self, te_decoder_cls)

        setattr(module, fam.hf.decoder, te_decoder_cls)
        pretrained.post_init = post_init
        try:
            # from_pretrained inside the block maps the checkpoint's keys to the TE layout (swap.loading)
            with conversions_registered(fam, fuse_qkv=fused, experts=getattr(te_decoder_cls, "experts", None)):
                yield
        finally:  # also on KeyboardInterrupt and GeneratorExit
            setattr(module, fam.hf.decoder, original)
            if own_post_init is None:
                del pretrained.post_init
            else:
                pretrained.post_init = own_post_init


@contextmanager
def no_swap_active() -> Iterator[None]:
    """Hold the swap lock so no other thread's swap is active while a stock model is built."""
    with SWAP_LOCK:
        yield

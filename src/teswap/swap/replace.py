"""`replace_decoder`: the scoped swap of a family's decoder-layer class (TE's te_llama pattern)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from teswap.swap.families import get_family
from teswap.swap.loading import conversions_registered
from teswap.swap.metadata import swapped_model_class

# The patch is process-global (a module attribute), so one lock serialises every patch and every
# stock build that must not see one. Re-entrant: nested swaps in one thread are allowed and each
# level restores what it found.
SWAP_LOCK = threading.RLock()


@contextmanager
def replace_decoder(te_decoder_cls: type, family: str = "llama") -> Iterator[None]:
    """Make models of `family` built inside the block use `te_decoder_cls`; always restore.

    The base model class (LlamaModel) is replaced too, by a subclass whose HF metadata names the
    new decoder class (`swap.metadata`): output_hidden_states and device_map then see the swapped
    layers. A causal LM built in the block is still the family's own class.
    """
    fam = get_family(family)
    module = fam.module()
    fused = bool(getattr(te_decoder_cls, "fuse_qkv_params", False))
    with SWAP_LOCK:
        original = getattr(module, fam.decoder_class_name)
        original_model = getattr(module, fam.model_class_name)
        base_model = getattr(original_model, "__teswap_base__", original_model)
        patched_model = swapped_model_class(base_model, te_decoder_cls)
        setattr(module, fam.decoder_class_name, te_decoder_cls)
        setattr(module, fam.model_class_name, patched_model)
        try:
            # from_pretrained inside the block maps the checkpoint's keys to the TE layout (swap.loading)
            with conversions_registered(fam.model_types[0], fuse_qkv=fused):
                yield
        finally:  # also on KeyboardInterrupt and GeneratorExit
            setattr(module, fam.decoder_class_name, original)
            setattr(module, fam.model_class_name, original_model)


@contextmanager
def no_swap_active() -> Iterator[None]:
    """Hold the swap lock so no other thread's swap is active while a stock model is built."""
    with SWAP_LOCK:
        yield

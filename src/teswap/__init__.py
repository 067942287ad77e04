"""teswap: does swapping an HF model's decoder layers for TransformerEngine keep its outputs, and how
much faster, leaner and cooler does it run? Importing teswap patches nothing and touches no GPU."""

from teswap.families import FAMILIES, decoder_class
from teswap.layers.rope import bind_rope
from teswap.swap.mapping import hf_to_te_state_dict, te_to_hf_state_dict
from teswap.swap.pair import Pair, build_pair
from teswap.swap.replace import replace_decoder

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "Pair",
    "bind_rope",
    "build_pair",
    "decoder_class",
    "hf_to_te_state_dict",
    "replace_decoder",
    "te_to_hf_state_dict",
]

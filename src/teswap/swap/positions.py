"""The positions a model was built for, and the refusal of a run past them unless the user says they mean it.

RoPE tables, scaling rules and caches past `max_position_embeddings` are not what the model was trained or
configured for, and a 100k-token sweep on a 1k-position preset runs until it is killed: such a run is
refused, naming the limit; the flag below lets it go past, and the cells or cases that do say so.
"""

from __future__ import annotations

from transformers import PretrainedConfig

BEYOND_FLAG = "--beyond-max-positions"


def max_positions(config: PretrainedConfig) -> int | None:
    """The config's max_position_embeddings, or None when it names none."""
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def beyond_limit(config: PretrainedConfig, tokens: int, *, model: str, what: str) -> str | None:
    """The refusal of `tokens` positions (`what` says where they come from) when past the limit; None within it."""
    limit = max_positions(config)
    if limit is None or tokens <= limit:
        return None
    return (f"{what}: {tokens} positions, beyond {model}'s max_position_embeddings of {limit}; pass {BEYOND_FLAG} "
            "to run past it anyway (recorded with the result)")

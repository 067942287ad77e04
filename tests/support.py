"""Helpers shared by the tests: small Llama configs that cover the shapes a swap must get right."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import LlamaConfig

from teswap import decoder_class
from teswap.hardware.nvml import PowerMeter

# The twin's Llama classes, as users get them (`teswap.decoder_class`), for tests that swap by hand.
TorchLlamaDecoderLayer = decoder_class("llama")
TorchLlamaDecoderLayerFusedQKV = decoder_class("llama", fuse_qkv=True)

# Each family's tiny preset (teswap.families.<name>): what the per-family tests build.
FAMILY_PRESETS = {"llama": "tiny", "mistral": "tiny-mistral", "qwen2": "tiny-qwen2", "qwen3": "tiny-qwen3",
                  "phi3": "tiny-phi3", "gemma": "tiny-gemma", "gemma3_text": "tiny-gemma3", "mixtral": "tiny-mixtral",
                  "qwen3_moe": "tiny-qwen3-moe"}
FAMILY_NAMES = list(FAMILY_PRESETS)


def family_config(family: str, **overrides):
    """The family's tiny preset config, with attributes overridden (layer_types follows num_hidden_layers)."""
    from teswap.swap.presets import PRESETS

    config = PRESETS[FAMILY_PRESETS[family]]()
    for name, value in overrides.items():
        setattr(config, name, value)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(layer_types) != config.num_hidden_layers:
        config.layer_types = [layer_types[i % len(layer_types)] for i in range(config.num_hidden_layers)]
    return config


def llama(**overrides) -> LlamaConfig:
    """A small Llama config; overrides go straight to LlamaConfig."""
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    base.update(overrides)
    return LlamaConfig(**base)


# A spread of valid Llama configs; each id says what it exercises.
CONFIGS = {
    "mha": lambda: llama(num_key_value_heads=4),
    "gqa": lambda: llama(num_attention_heads=8, num_key_value_heads=2),
    "mqa": lambda: llama(num_key_value_heads=1),
    "odd-sizes": lambda: llama(hidden_size=96, num_attention_heads=3, num_key_value_heads=1,
                               intermediate_size=200, vocab_size=301, num_hidden_layers=3),
    "tied-embeddings": lambda: llama(tie_word_embeddings=True),
    "explicit-head-dim": lambda: llama(head_dim=24),
    "rope-theta-500k": lambda: llama(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "llama3-rope-scaling": lambda: llama(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "yarn-attention-scaling": lambda: llama(rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}),
    "linear-rope-scaling": lambda: llama(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                          "factor": 2.0}),
}


def rel_max_err(test: torch.Tensor, ref: torch.Tensor) -> float:
    """max |test - ref| / max |ref|, in float64."""
    test, ref = test.double(), ref.double()
    return float((test - ref).abs().max() / ref.abs().max())


def random_ids(vocab: int, batch: int = 2, seq: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


class MeterOnClock(PowerMeter):
    """A GPU drawing a constant `power_w`: NVML's total-energy counter (mJ) follows `clock` (seconds), whether
    that is the wall clock or a test's scripted one. 50 °C, 1500 MHz, 1 GiB used."""

    def __init__(self, clock: Callable[[], float], power_w: float) -> None:
        self.clock, self.power = clock, power_w
        self.start = clock()

    def total_energy_mj(self) -> int:
        return round((self.clock() - self.start) * self.power * 1e3)

    def power_w(self) -> float:
        return self.power

    def temperature_c(self) -> float:
        return 50.0

    def sm_clock_mhz(self) -> float:
        return 1500.0

    def memory_used_bytes(self) -> int:
        return 1 << 30

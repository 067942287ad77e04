"""Mistral (model_type `mistral`): Llama's layer with a sliding window on every layer.

HF's window of W keys (the current one included; `MistralConfig.sliding_window` defaults to 4096) is
TE's `window_size=(W - 1, 0)`. NVIDIA's bionemo recipes pass (W, W), one token wider than HF (and
bidirectional); NeMo Automodel passes (W - 1, 0), which is right. `sliding_window=None` is plain
causal attention. Cached decode past the window: HF's sliding cache keeps W - 1 past keys, the twin
reads HF's cache, TE keeps the whole history and masks by window_size (checked against stock in
tests/test_families.py on the twin).
"""

from __future__ import annotations

from typing import Any

from transformers import MistralConfig, PretrainedConfig

from teswap.families.base import HFClasses, llama_dims, te_window
from teswap.families.llama import Llama
from teswap.layers.hf_adapter import head_dim_of


def tiny_mistral() -> MistralConfig:
    """Mistral-shaped, GQA 4:2, two layers, a 16-token window (parity at 48+ tokens crosses it)."""
    return MistralConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5,
                         sliding_window=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def mistral_7b() -> MistralConfig:
    """Mistral-7B-v0.1's shape: GQA 32:8, a 4096-token window on every layer."""
    return MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         rms_norm_eps=1e-5, sliding_window=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


class Mistral(Llama):
    name = "mistral"
    model_types = ("mistral",)
    hf = HFClasses(
        module="transformers.models.mistral.modeling_mistral", decoder="MistralDecoderLayer",
        pretrained="MistralPreTrainedModel", base_model="MistralModel", causal_lm="MistralForCausalLM",
        heads=("MistralForSequenceClassification", "MistralForQuestionAnswering", "MistralForTokenClassification"),
        rotary="MistralRotaryEmbedding", config="MistralConfig")
    presets = {"tiny-mistral": tiny_mistral, "mistral-7b": mistral_7b}

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"window_size": te_window(getattr(config, "sliding_window", None))}

    def from_llama(self, config: PretrainedConfig, state: dict[str, Any]) -> tuple[PretrainedConfig, dict[str, Any]]:
        """Llama's weights as they are, every layer with a 64-token window (the function past 64 tokens changes)."""
        return MistralConfig(**llama_dims(config), head_dim=head_dim_of(config), sliding_window=64), dict(state)

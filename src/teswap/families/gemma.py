"""Gemma (model_type `gemma`): (1 + w) RMSNorm, tanh-GELU GeGLU, head_dim 256 (TE's te_gemma example).

- HF's GemmaRMSNorm multiplies by (1 + w) in fp32: TE's `zero_centered_gamma=True` keeps w and does
  the same, so the norm weights map as they are.
- GemmaMLP is down(gelu_tanh(gate(x)) * up(x)): TE's `activation="geglu"` (TE's GELU is the tanh form)
  with fc1 = [gate; up]. The exact-erf GELU is not expressible; GemmaConfig itself turns the legacy
  `hidden_act="gelu"` into "gelu_pytorch_tanh", so any other value is refused.
- the embedding's x sqrt(hidden) is the model's, outside the layers.
"""

from __future__ import annotations

from typing import Any

from transformers import GemmaConfig, PretrainedConfig

from teswap.families.base import Family, HFClasses


def tiny_gemma() -> GemmaConfig:
    """Gemma-shaped: head_dim 64 with hidden 128 and 4 heads (2x hidden/heads), MQA, tied, tanh GeGLU.

    initializer_range 0.05: at HF's 0.02 the sqrt(hidden)-scaled embedding dominates a random two-layer
    Gemma's logits, so the layers (what the swap changes, and what FP8 quantizes) barely show in them."""
    return GemmaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                       rms_norm_eps=1e-6, initializer_range=0.05,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def gemma_2b() -> GemmaConfig:
    """Gemma-2B's shape: 18 layers, 8 heads, MQA, head_dim 256, vocabulary 256000, tied."""
    return GemmaConfig(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
                       num_attention_heads=8, num_key_value_heads=1, head_dim=256, max_position_embeddings=8192,
                       rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


class Gemma(Family):
    name = "gemma"
    model_types = ("gemma",)
    hf = HFClasses(
        module="transformers.models.gemma.modeling_gemma", decoder="GemmaDecoderLayer",
        pretrained="GemmaPreTrainedModel", base_model="GemmaModel", causal_lm="GemmaForCausalLM",
        heads=("GemmaForSequenceClassification", "GemmaForTokenClassification"),
        rotary="GemmaRotaryEmbedding", config="GemmaConfig")
    presets = {"tiny-gemma": tiny_gemma, "gemma-2b": gemma_2b}
    activation = "geglu"
    hf_activations = ("gelu_pytorch_tanh",)
    scales_embeddings = True  # GemmaModel multiplies the embedding by sqrt(hidden_size) itself

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        if getattr(config, "attention_bias", False):
            return ["attention_bias=True (q/k/v/o biases are not mapped for Gemma; no released Gemma has them)"]
        return []

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"zero_centered_gamma": True}

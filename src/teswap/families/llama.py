"""Llama (model_type `llama`): the family TE's te_llama example swaps, and the one the others build on.

Refused: q/k/v/o and MLP biases (`attention_bias`, `mlp_bias`: TE's bias is all-or-nothing and Llama's
layout maps none), any activation but SiLU, `pretraining_tp`.
"""

from __future__ import annotations

from transformers import LlamaConfig, PretrainedConfig

from teswap.families.base import Family, HFClasses


def tiny() -> LlamaConfig:
    """Llama-shaped, GQA 4:2, two layers: builds and runs a forward in milliseconds on CPU."""
    return LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def tiny_llama3() -> LlamaConfig:
    """Tiny, but with Llama-3's rope (theta 500000, llama3 scaling), head_dim != hidden/heads, tied."""
    return LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=48,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    )


def llama2_7b() -> LlamaConfig:
    """Llama-2-7B's shape (MHA, theta 10000): the TE te_llama tutorial's model."""
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def llama3_8b() -> LlamaConfig:
    """Llama-3.1-8B's shape: GQA 32:8, theta 500000 with llama3 scaling, 128k positions."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def llama32_1b() -> LlamaConfig:
    """Llama-3.2-1B's shape: 16 layers, GQA 32:8, tied embeddings; a quick GPU sweep."""
    return LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


class Llama(Family):
    name = "llama"
    model_types = ("llama",)
    hf = HFClasses(
        module="transformers.models.llama.modeling_llama", decoder="LlamaDecoderLayer",
        pretrained="LlamaPreTrainedModel", base_model="LlamaModel", causal_lm="LlamaForCausalLM",
        heads=("LlamaForSequenceClassification", "LlamaForQuestionAnswering", "LlamaForTokenClassification"),
        rotary="LlamaRotaryEmbedding", config="LlamaConfig")
    presets = {"tiny": tiny, "tiny-llama3": tiny_llama3, "llama3.2-1b": llama32_1b, "llama2-7b": llama2_7b,
               "llama3-8b": llama3_8b}

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        found = []
        if getattr(config, "attention_bias", False):
            found.append("attention_bias=True (q/k/v/o biases: TE's bias is all-or-nothing and the Llama "
                         "layout maps none)")
        if getattr(config, "mlp_bias", False):
            found.append("mlp_bias=True (gate/up/down biases are not mapped)")
        return found

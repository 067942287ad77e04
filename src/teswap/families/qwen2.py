"""Qwen2 / Qwen2.5 (model_type `qwen2`): q/k/v biases, and sliding windows on the layers `layer_types` names.

Qwen2's q/k/v biases are hard-coded (its config has no `attention_bias` field; o_proj and the MLP have
none). TE's bias is all-or-nothing: `bias=True` gives q/k/v, proj, fc1 and fc2 biases, so the three HF
lacks are held at zero and frozen (never trained, required to be zero when mapped back). A layer
whose `layer_types` entry is "sliding_attention" (use_sliding_window, from max_window_layers on) gets
TE's `window_size=(W - 1, 0)`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, Qwen2Config

from teswap.families.base import HFClasses, hf_window, llama_dims, te_window
from teswap.families.llama import Llama
from teswap.families.rules import Rule

TE_ONLY_BIASES = ("self_attention.proj.bias", "layernorm_mlp.fc1_bias", "layernorm_mlp.fc2_bias")


def tiny_qwen2() -> Qwen2Config:
    """Qwen2-shaped, GQA 4:2, tied; layer 0 full attention, layer 1 a 16-token window (max_window_layers=1)."""
    return Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, use_sliding_window=True, sliding_window=16, max_window_layers=1,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen25_05b() -> Qwen2Config:
    """Qwen2.5-0.5B's shape: 24 layers, GQA 14:2, head_dim 64, tied embeddings, theta 1e6."""
    return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


class Qwen2(Llama):
    name = "qwen2"
    model_types = ("qwen2",)
    hf = HFClasses(
        module="transformers.models.qwen2.modeling_qwen2", decoder="Qwen2DecoderLayer",
        pretrained="Qwen2PreTrainedModel", base_model="Qwen2Model", causal_lm="Qwen2ForCausalLM",
        heads=("Qwen2ForSequenceClassification", "Qwen2ForQuestionAnswering", "Qwen2ForTokenClassification"),
        rotary="Qwen2RotaryEmbedding", config="Qwen2Config")
    presets = {"tiny-qwen2": tiny_qwen2, "qwen2.5-0.5b": qwen25_05b}

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        return []  # the q/k/v biases are Qwen2's own and mapped; there is no other bias to refuse

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"bias": True, "window_size": te_window(hf_window(config, layer_idx))}

    def frozen_zero(self, config: PretrainedConfig) -> tuple[str, ...]:
        return TE_ONLY_BIASES

    def from_llama(self, config: PretrainedConfig, state: dict[str, Any]) -> tuple[PretrainedConfig, dict[str, Any]]:
        """Llama's weights plus q/k/v biases drawn N(0, 0.02) (seeded), 64-token windows on the second half
        of the layers (Qwen2's max_window_layers)."""
        qwen = Qwen2Config(**llama_dims(config), use_sliding_window=True, sliding_window=64,
                           max_window_layers=config.num_hidden_layers // 2)
        generator = torch.Generator().manual_seed(2)
        out = dict(state)
        for key, weight in state.items():
            if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                bias = torch.randn(weight.shape[0], generator=generator, dtype=torch.float32) * 0.02
                out[key.removesuffix("weight") + "bias"] = bias.to(weight.dtype)
        return qwen, out

    def attention_rules(self, config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
        return [*super().attention_rules(config, fuse_qkv=fuse_qkv),
                *self.qkv_rules(config, "bias", fuse_qkv=fuse_qkv)]

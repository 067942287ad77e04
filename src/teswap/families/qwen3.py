"""Qwen3 (model_type `qwen3`): per-head RMSNorm on q and k before RoPE; head_dim decoupled (128).

TE expresses the q/k norm as `qk_norm_type="RMSNorm", qk_norm_before_rope=True, qk_norm_eps`
(TransformerLayer gained them in TE 2.7; 2.5-2.6 have only `use_qk_norm`, an L2 norm after RoPE, so
older TE is refused naming 2.7). One weight of head_dim per norm, shared by all heads:
`self_attn.q_norm.weight` -> `self_attention.q_norm.weight`. `attention_bias=True` (all of q, k, v
and o) maps to TE's `bias=True` with the MLP's two biases held at zero; sliding windows follow
`layer_types` as Qwen2's.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, Qwen3Config

from teswap.families import rules
from teswap.families.base import HFClasses, hf_window, llama_dims, te_window
from teswap.families.llama import Llama
from teswap.families.rules import Rule
from teswap.layers.hf_adapter import head_dim_of

QK_NORM_TE = ((2, 7), "qk_norm_type='RMSNorm' with qk_norm_before_rope=True (Qwen3's q/k norm)")


def tiny_qwen3() -> Qwen3Config:
    """Qwen3-shaped: head_dim 48 decoupled from hidden/heads (128/4), GQA 4:2, q/k norms, tied."""
    return Qwen3Config(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=48, max_position_embeddings=1024,
                       rms_norm_eps=1e-6, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen3_06b() -> Qwen3Config:
    """Qwen3-0.6B's shape: 28 layers, GQA 16:8, head_dim 128 (hidden 1024), tied embeddings."""
    return Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rms_norm_eps=1e-6, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


class Qwen3(Llama):
    name = "qwen3"
    model_types = ("qwen3",)
    hf = HFClasses(
        module="transformers.models.qwen3.modeling_qwen3", decoder="Qwen3DecoderLayer",
        pretrained="Qwen3PreTrainedModel", base_model="Qwen3Model", causal_lm="Qwen3ForCausalLM",
        heads=("Qwen3ForSequenceClassification", "Qwen3ForQuestionAnswering", "Qwen3ForTokenClassification"),
        rotary="Qwen3RotaryEmbedding", config="Qwen3Config")
    presets = {"tiny-qwen3": tiny_qwen3, "qwen3-0.6b": qwen3_06b}

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        return []  # attention_bias=True is mapped (q, k, v and o biases)

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"bias": bool(getattr(config, "attention_bias", False)),
                "window_size": te_window(hf_window(config, layer_idx)),
                "qk_norm_type": "RMSNorm", "qk_norm_before_rope": True, "qk_norm_eps": config.rms_norm_eps}

    def config_variants(self) -> list[PretrainedConfig]:
        with_bias: Any = self.hf.config_class()
        return [*super().config_variants(), with_bias(attention_bias=True)]

    def from_llama(self, config: PretrainedConfig, state: dict[str, Any]) -> tuple[PretrainedConfig, dict[str, Any]]:
        """Llama's weights plus q/k RMSNorms at gamma 1 (they still normalise q and k: not the trained function)."""
        head_dim = head_dim_of(config)
        qwen = Qwen3Config(**llama_dims(config), head_dim=head_dim)
        out = dict(state)
        for key, weight in state.items():
            for proj, norm in (("q_proj", "q_norm"), ("k_proj", "k_norm")):
                if key.endswith(f"self_attn.{proj}.weight"):
                    out[key.replace(f"{proj}.weight", f"{norm}.weight")] = torch.ones(head_dim, dtype=weight.dtype)
        return qwen, out

    def te_versions(self, config: PretrainedConfig) -> tuple[tuple[tuple[int, int], str], ...]:
        return (QK_NORM_TE,)

    def frozen_zero(self, config: PretrainedConfig) -> tuple[str, ...]:
        if getattr(config, "attention_bias", False):
            return ("layernorm_mlp.fc1_bias", "layernorm_mlp.fc2_bias")
        return ()

    def attention_rules(self, config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
        found = [*super().attention_rules(config, fuse_qkv=fuse_qkv),
                 rules.rename("self_attn.q_norm.weight", "self_attention.q_norm.weight"),
                 rules.rename("self_attn.k_norm.weight", "self_attention.k_norm.weight")]
        if getattr(config, "attention_bias", False):
            found += [*self.qkv_rules(config, "bias", fuse_qkv=fuse_qkv),
                      rules.rename("self_attn.o_proj.bias", "self_attention.proj.bias")]
        return found

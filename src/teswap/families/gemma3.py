"""Gemma3 text (model_type `gemma3_text`): sandwich norms, (1 + w) q/k norms, 5 sliding : 1 full layers,
two RoPE tables and `query_pre_attn_scalar`. Not a TransformerLayer: a composite of TE modules.

TE's TransformerLayer has no norm after attention or after the MLP, so each Gemma3 layer is built
as TE's te_gemma-style composite, named a composite everywhere (teswap.layers.plan.COMPOSITE):

    self_attention              MultiheadAttention (input_layernorm fused into QKV, q/k RMSNorm before RoPE)
    post_attention_layernorm    RMSNorm, zero-centred gamma
    layernorm_mlp               LayerNormMLP (pre_feedforward_layernorm fused into fc1), GeGLU
    post_feedforward_layernorm  RMSNorm, zero-centred gamma

    out = x + post_attention_norm(attn(x)); out = out + post_feedforward_norm(mlp(out))

- HF's norms are (1 + w) in fp32. TE's RMSNorm and the fused norms take `zero_centered_gamma=True`
  and keep w; the q/k norms TE's MultiheadAttention makes take no such argument, so TE holds 1 + w
  there (`unit_offset`, computed in fp32 and rounded once to the weight dtype).
- a layer's `layer_types` entry picks its window ((W - 1, 0) on sliding layers) and its RoPE table:
  the rotary module keeps `{layer_type}_inv_freq` and `{layer_type}_attention_scaling`.
- the softmax scale is query_pre_attn_scalar^-0.5, not head_dim^-0.5.
- the q/k norm needs TE >= 2.7 (qk_norm_type, qk_norm_before_rope).
Refused: attention logit softcapping (no TE release has it), bidirectional attention, attention biases,
any activation but tanh-GELU.
"""

from __future__ import annotations

from typing import Any

from transformers import Gemma3TextConfig, PretrainedConfig

from teswap.families import rules
from teswap.families.base import Family, HFClasses, hf_window, te_window
from teswap.families.qwen3 import QK_NORM_TE
from teswap.families.rules import Rule
from teswap.layers.plan import COMPOSITE

SOFTCAPPING_REFUSAL = ("attn_logit_softcapping={} (tanh softcapping of attention scores: no TransformerEngine "
                       "release has it, so neither backend computes it)")


def tiny_gemma3() -> Gemma3TextConfig:
    """Gemma3-shaped: a sliding (16 tokens, local RoPE 1e4) and a full layer (RoPE 1e6, linear x2),
    query_pre_attn_scalar 24 != head_dim 32, GQA 4:2, tied."""
    return Gemma3TextConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rms_norm_eps=1e-6, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=24,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})


def gemma3_1b() -> Gemma3TextConfig:
    """gemma-3-1b's shape: 26 layers (5 sliding : 1 full, window 512), 4 heads, MQA, head_dim 256, vocab 262144."""
    return Gemma3TextConfig(
        vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, max_position_embeddings=32768, rms_norm_eps=1e-6, sliding_window=512,
        query_pre_attn_scalar=256,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})


class Gemma3Text(Family):
    name = "gemma3_text"
    model_types = ("gemma3_text",)
    hf = HFClasses(
        module="transformers.models.gemma3.modeling_gemma3", decoder="Gemma3DecoderLayer",
        pretrained="Gemma3PreTrainedModel", base_model="Gemma3TextModel", causal_lm="Gemma3ForCausalLM",
        heads=("Gemma3TextForSequenceClassification",), rotary="Gemma3RotaryEmbedding", config="Gemma3TextConfig")
    presets = {"tiny-gemma3": tiny_gemma3, "gemma3-1b": gemma3_1b}
    layout = COMPOSITE
    activation = "geglu"
    hf_activations = ("gelu_pytorch_tanh",)
    activation_field = "hidden_activation"  # Gemma2/3 read hidden_activation, not hidden_act

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        found = []
        if getattr(config, "attn_logit_softcapping", None) is not None:
            found.append(SOFTCAPPING_REFUSAL.format(config.attn_logit_softcapping))
        if getattr(config, "attention_bias", False):
            found.append("attention_bias=True (q/k/v/o biases are not mapped for Gemma3)")
        return found

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"zero_centered_gamma": True, "window_size": te_window(hf_window(config, layer_idx)),
                "qk_norm_type": "RMSNorm", "qk_norm_before_rope": True, "qk_norm_eps": config.rms_norm_eps}

    def te_versions(self, config: PretrainedConfig) -> tuple[tuple[tuple[int, int], str], ...]:
        return (QK_NORM_TE,)

    def rope_of_layer(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        layer_type = config.layer_types[layer_idx]
        return {"rope_buffer": f"{layer_type}_inv_freq", "rope_scaling_attr": f"{layer_type}_attention_scaling",
                "query_scale": float(config.query_pre_attn_scalar) ** -0.5}

    def norm_rules(self, config: PretrainedConfig) -> list[Rule]:
        return [rules.rename("input_layernorm.weight", "self_attention.layernorm_qkv.layer_norm_weight"),
                rules.rename("post_attention_layernorm.weight", "post_attention_layernorm.weight"),
                rules.rename("pre_feedforward_layernorm.weight", "layernorm_mlp.layer_norm_weight"),
                rules.rename("post_feedforward_layernorm.weight", "post_feedforward_layernorm.weight")]

    def attention_rules(self, config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
        return [*super().attention_rules(config, fuse_qkv=fuse_qkv),
                rules.unit_offset("self_attn.q_norm.weight", "self_attention.q_norm.weight"),
                rules.unit_offset("self_attn.k_norm.weight", "self_attention.k_norm.weight")]

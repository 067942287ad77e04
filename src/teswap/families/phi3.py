"""Phi-3 (model_type `phi3`): fused qkv_proj and gate_up_proj, partial rotary, a window, residual dropout.

- `qkv_proj` rows are [q; k; v]. TE's fused layout with `qkv_weight_interleaved=False` splits its GEMM
  output into contiguous q, k, v blocks (multi_head_attention.py views it as [(np/ng + 2), ng, hn] and
  splits the first axis), so the fused TE weight is HF's as is; the split layout takes its row blocks.
- `gate_up_proj` rows are [gate; up], the activation on the first half: TE's fc1 as is.
- partial rotary (`partial_rotary_factor`): HF's inv_freq covers the first head_dim x factor channels;
  TE (and the twin) rotate as many channels as the freqs tensor has and pass the rest through.
- longrope: HF's rotary module swaps short/long factors at run time (`dynamic_rope_update`) and the
  layers read its inv_freq at every forward; its attention factor scales the softmax.
- `sliding_window` (2047 for mini-4k) on every layer: TE's (W - 1, 0).
- `resid_pdrop`: dropout on the attention and MLP outputs before each residual add, TE's hidden_dropout.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Phi3Config, PretrainedConfig

from teswap.families import rules
from teswap.families.base import HFClasses, llama_dims, te_window
from teswap.families.llama import Llama
from teswap.families.rules import Rule
from teswap.layers.hf_adapter import head_dim_of, kv_groups_of


def tiny_phi3() -> Phi3Config:
    """Phi-3-shaped with what Phi-4-mini and the 128k models add: partial rotary (0.5), longrope (switching
    factors past 64 positions; attention factor 1, which partial rotary needs here), GQA 4:2, a 16-token window."""
    rotary_half = 128 // 4 // 2 // 2  # head_dim 32, half rotated, one factor per frequency
    return Phi3Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      original_max_position_embeddings=64, sliding_window=16, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2, rope_parameters={
                          "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                          "factor": 4.0, "attention_factor": 1.0, "original_max_position_embeddings": 64,
                          "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
                          "long_factor": [2.0 + 0.3 * i for i in range(rotary_half)]})


def phi3_mini() -> Phi3Config:
    """Phi-3-mini-4k's shape: 32 layers, 32 heads (MHA), head_dim 96, a 2047-token window."""
    return Phi3Config(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      original_max_position_embeddings=4096, sliding_window=2047, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


class Phi3(Llama):
    name = "phi3"
    model_types = ("phi3",)
    hf = HFClasses(
        module="transformers.models.phi3.modeling_phi3", decoder="Phi3DecoderLayer",
        pretrained="Phi3PreTrainedModel", base_model="Phi3Model", causal_lm="Phi3ForCausalLM",
        heads=("Phi3ForSequenceClassification", "Phi3ForTokenClassification"),
        rotary="Phi3RotaryEmbedding", config="Phi3Config")
    presets = {"tiny-phi3": tiny_phi3, "phi3-mini": phi3_mini}

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        # Phi-3's linears have no biases (hard-coded bias=False). HF multiplies cos and sin by the rope's
        # attention factor, which with partial rotary scales only the rotated channels of q and k: the
        # softmax scale (how both backends honour it) would scale them all, and TE's RoPE has no amplitude.
        partial = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
        if partial < 1.0:
            scaling = float(getattr(self.rotary_module(config), "attention_scaling", 1.0))
            if scaling != 1.0:
                return [f"partial_rotary_factor={partial} with a rope attention factor of {scaling:.4g} "
                        "(longrope/yarn): HF scales only the rotated channels of q and k, which TE's RoPE cannot"]
        return []

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"window_size": te_window(getattr(config, "sliding_window", None)),
                "hidden_dropout": float(getattr(config, "resid_pdrop", 0.0) or 0.0),
                "qkv_weight_interleaved": False}

    def attention_rules(self, config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
        if fuse_qkv:
            qkv = rules.rename("self_attn.qkv_proj.weight", "self_attention.layernorm_qkv.weight")
        else:
            head_dim, groups = head_dim_of(config), kv_groups_of(config)
            qkv = rules.split_rows(
                "self_attn.qkv_proj.weight",
                [f"self_attention.layernorm_qkv.{n}_weight" for n in ("query", "key", "value")],
                rows=[config.num_attention_heads * head_dim, groups * head_dim, groups * head_dim])
        return [qkv, rules.rename("self_attn.o_proj.weight", "self_attention.proj.weight")]

    def from_llama(self, config: PretrainedConfig, state: dict[str, Any]) -> tuple[PretrainedConfig, dict[str, Any]]:
        """The same function in Phi-3's layout: q/k/v rows fused into qkv_proj, gate/up into gate_up_proj."""
        phi = Phi3Config(**llama_dims(config), original_max_position_embeddings=config.max_position_embeddings)
        out: dict[str, Any] = {}
        for key, tensor in state.items():
            if key.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight")):
                continue
            if key.endswith("q_proj.weight"):
                parts = [state[key.replace("q_proj", name)] for name in ("q_proj", "k_proj", "v_proj")]
                out[key.replace("q_proj", "qkv_proj")] = torch.cat(parts, dim=0)
            elif key.endswith("gate_proj.weight"):
                out[key.replace("gate_proj", "gate_up_proj")] = torch.cat([tensor, state[key.replace("gate", "up")]])
            else:
                out[key] = tensor
        return phi, out

    def mlp_rules(self, config: PretrainedConfig) -> list[Rule]:
        return [rules.rename("mlp.gate_up_proj.weight", "layernorm_mlp.fc1_weight"),
                rules.rename("mlp.down_proj.weight", "layernorm_mlp.fc2_weight")]

"""Qwen3-MoE (model_type `qwen3_moe`): Qwen3's attention (q/k RMSNorm before RoPE, TE >= 2.7), sparse
MoE layers among dense ones.

HF's Qwen3MoeSparseMoeBlock: softmax in fp32, top-k, renormalised ONLY under `norm_topk_prob`
(False by default), the top-k weights rounded to the input dtype; experts as Mixtral's
(moe_intermediate_size each). A layer is MoE when it is not in `mlp_only_layers` and
(layer_idx + 1) % decoder_sparse_step == 0; the others are dense Qwen3MoeMLP layers
(intermediate_size), swapped as attention + LayerNormMLP. `use_sliding_window` puts
`sliding_window` on every layer (HF sets it to None otherwise). Older per-expert checkpoints
(mlp.experts.N.gate_proj/up_proj/down_proj) are converted by transformers at load time.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen3MoeConfig

from teswap.families.base import HFClasses, te_window
from teswap.families.moe import MoEFamily
from teswap.families.qwen3 import Qwen3


def _head_dim(size: int) -> dict[str, Any]:
    """head_dim is no declared field of Qwen3MoeConfig, yet kept as an attribute and read by its attention."""
    return {"head_dim": size}


def tiny_qwen3_moe() -> Qwen3MoeConfig:
    """Qwen3-MoE-shaped: 3 layers, the first dense (mlp_only_layers), 8 experts of 64, top-2, HF's default
    norm_topk_prob=False (the un-renormalised path; the qwen3-30b-a3b preset renormalises), head_dim 48, GQA 4:2."""
    return Qwen3MoeConfig(vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, **_head_dim(48),
                          max_position_embeddings=1024, rms_norm_eps=1e-6, num_experts=8, num_experts_per_tok=2,
                          norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[0],
                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def qwen3_30b_a3b() -> Qwen3MoeConfig:
    """Qwen3-30B-A3B's shape: 48 layers, GQA 32:4, head_dim 128, 128 experts of 768, top-8, renormalised."""
    return Qwen3MoeConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                          num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, **_head_dim(128),
                          max_position_embeddings=40960, rms_norm_eps=1e-6, num_experts=128, num_experts_per_tok=8,
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                          rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


class Qwen3Moe(MoEFamily, Qwen3):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)
    hf = HFClasses(
        module="transformers.models.qwen3_moe.modeling_qwen3_moe", decoder="Qwen3MoeDecoderLayer",
        pretrained="Qwen3MoePreTrainedModel", base_model="Qwen3MoeModel", causal_lm="Qwen3MoeForCausalLM",
        heads=("Qwen3MoeForSequenceClassification", "Qwen3MoeForQuestionAnswering",
               "Qwen3MoeForTokenClassification"),
        rotary="Qwen3MoeRotaryEmbedding", config="Qwen3MoeConfig")
    presets = {"tiny-qwen3-moe": tiny_qwen3_moe, "qwen3-30b-a3b": qwen3_30b_a3b}
    hf_router = "Qwen3MoeTopKRouter"
    hf_moe_block = "Qwen3MoeSparseMoeBlock"
    hf_dense_mlp = "Qwen3MoeMLP"

    def num_experts(self, config: PretrainedConfig) -> int:
        return int(config.num_experts)

    def expert_size(self, config: PretrainedConfig) -> int:
        return int(config.moe_intermediate_size)

    def renormalizes(self, config: PretrainedConfig) -> bool:
        return bool(config.norm_topk_prob)

    def scores_in_input_dtype(self) -> bool:
        return True

    def is_moe_layer(self, config: PretrainedConfig, layer_idx: int) -> bool:
        """HF's Qwen3MoeDecoderLayer rule, as it is."""
        return (layer_idx not in (config.mlp_only_layers or [])) and (
            config.num_experts > 0 and (layer_idx + 1) % config.decoder_sparse_step == 0)

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        return MoEFamily.family_problems(self, config)

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        return {"window_size": te_window(getattr(config, "sliding_window", None)),
                "qk_norm_type": "RMSNorm", "qk_norm_before_rope": True, "qk_norm_eps": config.rms_norm_eps}

    def frozen_zero(self, config: PretrainedConfig) -> tuple[str, ...]:
        return ()

    def shape_variants(self) -> list[PretrainedConfig]:
        return [Qwen3MoeConfig(num_hidden_layers=2, mlp_only_layers=[0])]  # a dense and an MoE layer

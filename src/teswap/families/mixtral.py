"""Mixtral (model_type `mixtral`): Mistral's attention, every layer a sparse MoE (top-k of E experts).

HF's MixtralSparseMoeBlock: the router's logits in the input dtype, softmax in fp32, top-k, ALWAYS
renormalised over the k (the weights stay fp32); experts held as 3-D gate_up_proj [E, 2I, H] (gate
first) and down_proj [E, H, I]. Older checkpoints (block_sparse_moe.experts.N.w1/w3/w2, gate as a
Linear) are converted by transformers at load time; teswap's mapping composes with that conversion
(teswap.swap.loading). The swapped layer is the MoE composite (teswap.families.moe); `sliding_window`
(None by default) is honoured as Mistral's, which te_mixtral and bionemo's Mixtral ignore.
"""

from __future__ import annotations

from transformers import MixtralConfig, PretrainedConfig

from teswap.families.base import HFClasses
from teswap.families.mistral import Mistral
from teswap.families.moe import MoEFamily


def tiny_mixtral() -> MixtralConfig:
    """Mixtral-shaped: 4 experts, top-2, GQA 4:2, two layers, a 16-token window (crossed at 48+ tokens)."""
    return MixtralConfig(vocab_size=512, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rms_norm_eps=1e-5, num_local_experts=4, num_experts_per_tok=2, sliding_window=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


def mixtral_8x7b() -> MixtralConfig:
    """Mixtral-8x7B's shape: 32 layers, GQA 32:8, 8 experts of 14336, top-2, theta 1e6, no window (46.7B)."""
    return MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                         rms_norm_eps=1e-5, num_local_experts=8, num_experts_per_tok=2, sliding_window=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})


class Mixtral(MoEFamily, Mistral):
    name = "mixtral"
    model_types = ("mixtral",)
    hf = HFClasses(
        module="transformers.models.mixtral.modeling_mixtral", decoder="MixtralDecoderLayer",
        pretrained="MixtralPreTrainedModel", base_model="MixtralModel", causal_lm="MixtralForCausalLM",
        heads=("MixtralForSequenceClassification", "MixtralForQuestionAnswering", "MixtralForTokenClassification"),
        rotary="MixtralRotaryEmbedding", config="MixtralConfig")
    presets = {"tiny-mixtral": tiny_mixtral, "mixtral-8x7b": mixtral_8x7b}
    hf_router = "MixtralTopKRouter"
    hf_moe_block = "MixtralSparseMoeBlock"

    def num_experts(self, config: PretrainedConfig) -> int:
        return int(config.num_local_experts)

    def expert_size(self, config: PretrainedConfig) -> int:
        return int(config.intermediate_size)

    def renormalizes(self, config: PretrainedConfig) -> bool:
        return True

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        return MoEFamily.family_problems(self, config)

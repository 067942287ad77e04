"""Gemma2 (model_type `gemma2`): refused. Its attention scores go through tanh softcapping
(`attn_logit_softcapping`, 50 in every released Gemma2), which no TransformerEngine release computes;
without it Gemma2 would be Gemma3's composite minus the q/k norms, which teswap does not build for a
family whose checkpoints all use softcapping. Registered so that the refusal names the reason.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from teswap.families.base import HFClasses
from teswap.families.gemma3 import SOFTCAPPING_REFUSAL, Gemma3Text

NOT_BUILT = ("gemma2 without softcapping is not built (every released Gemma2 uses it; Gemma3's composite "
             "would need its q/k norms removed)")


class Gemma2(Gemma3Text):
    name = "gemma2"
    model_types = ("gemma2",)
    hf = HFClasses(
        module="transformers.models.gemma2.modeling_gemma2", decoder="Gemma2DecoderLayer",
        pretrained="Gemma2PreTrainedModel", base_model="Gemma2Model", causal_lm="Gemma2ForCausalLM",
        heads=("Gemma2ForSequenceClassification", "Gemma2ForTokenClassification"),
        rotary="Gemma2RotaryEmbedding", config="Gemma2Config")

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        softcap = getattr(config, "attn_logit_softcapping", None)
        return [SOFTCAPPING_REFUSAL.format(softcap) if softcap is not None else NOT_BUILT]

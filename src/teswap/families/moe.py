"""What the mixture-of-experts families (Mixtral, Qwen3-MoE) share: the MoE composite's plan and mapping.

An MoE family's swapped layer is a composite (teswap.layers.plan.MOE_COMPOSITE; the tree is in
teswap.layers.torch_moe), with one of two expert implementations:

    grouped (default)  TE's, as te_mixtral: router te.Linear, GroupedLinear experts, moe_permute/unpermute
    hf                 HF's own sparse MoE block kept as it is (only attention and norms move to TE)

The implementation is chosen by the decoder class (`decoder_class(family, experts=...)`, a family
variant from `with_experts`) and recorded in the model's config as `teswap_experts` (saved with it),
which the mapping reads. HF <-> TE per MoE layer:

    input_layernorm.weight            self_attention.layernorm_qkv.layer_norm_weight
    post_attention_layernorm.weight   post_attention_layernorm.weight (te.RMSNorm; the same name in every layer)
    mlp.gate.weight                   grouped: mlp.router.weight            hf: mlp.gate.weight
    mlp.experts.gate_up_proj [E,2I,H] grouped: mlp.experts_fc1.weight{e}   hf: as it is
    mlp.experts.down_proj [E,H,I]     grouped: mlp.experts_fc2.weight{e}   hf: as it is

HF's gate_up_proj is [gate; up] per expert, the order TE's SwiGLU wants (activation on the first half).
A dense layer among MoE ones: mlp.gate_proj/up_proj -> mlp.fc1.weight ([gate; up]), down_proj -> mlp.fc2.weight.
Refused: router jitter noise (random input noise
in training that neither backend reproduces), attention biases, top-k beyond the expert count.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from typing import Any, ClassVar

from transformers import PretrainedConfig

from teswap.errors import UnsupportedConfigError
from teswap.families import rules
from teswap.families.base import Family, layer_index_of
from teswap.families.rules import Rule
from teswap.layers.plan import EXPERT_IMPLEMENTATIONS, GROUPED_EXPERTS, HF_EXPERTS, MOE_COMPOSITE, LayerPlan, MoEPlan

EXPERTS_FIELD = "teswap_experts"  # the config attribute that records the expert implementation


def experts_of(config: PretrainedConfig) -> str:
    """The expert implementation a (swapped) model's config records; grouped where it records none."""
    experts = getattr(config, EXPERTS_FIELD, None) or GROUPED_EXPERTS
    if experts not in EXPERT_IMPLEMENTATIONS:
        raise UnsupportedConfigError(f"{EXPERTS_FIELD}={experts!r}: the expert implementations are "
                                     f"{', '.join(EXPERT_IMPLEMENTATIONS)}")
    return experts


class MoEFamily(Family):
    """Mixin for an MoE family: its layers are MoE composites (dense ones where the config says)."""

    layout = MOE_COMPOSITE
    experts: str | None = None  # a variant's chosen implementation (None: the config's, else grouped)
    hf_router: ClassVar[str]  # HF's router class (HF records router_logits from it)
    hf_moe_block: ClassVar[str]  # HF's sparse MoE block class
    hf_dense_mlp: ClassVar[str | None] = None  # HF's dense MLP class (families with dense layers)

    # --- what HF's config says -----------------------------------------------------------------------
    def num_experts(self, config: PretrainedConfig) -> int:
        raise NotImplementedError

    def expert_size(self, config: PretrainedConfig) -> int:
        raise NotImplementedError

    def renormalizes(self, config: PretrainedConfig) -> bool:
        raise NotImplementedError

    def scores_in_input_dtype(self) -> bool:
        return False

    def is_moe_layer(self, config: PretrainedConfig, layer_idx: int) -> bool:
        return True

    def moe_layers(self, config: PretrainedConfig) -> list[int]:
        return [i for i in range(config.num_hidden_layers) if self.is_moe_layer(config, i)]

    # --- the variants --------------------------------------------------------------------------------
    def with_experts(self, experts: str | None) -> MoEFamily:
        """This family with its expert implementation fixed (one cached variant per implementation)."""
        if experts is None:
            return self
        if experts not in EXPERT_IMPLEMENTATIONS:
            raise UnsupportedConfigError(f"experts={experts!r}: choose one of {', '.join(EXPERT_IMPLEMENTATIONS)}")
        return _variant(self, experts)

    @property
    def class_suffix(self) -> str:
        return "HFExperts" if self.experts == HF_EXPERTS else ""

    def router_class(self) -> type:
        """The class whose forward returns this family's router logits first, in the chosen implementation."""
        if self.experts == HF_EXPERTS:
            return getattr(self.module(), self.hf_router)
        from teswap.layers.torch_moe import Router

        return Router

    def record_experts(self, config: PretrainedConfig) -> str:
        """The implementation a layer built now uses: the variant's (recorded in the config), else the config's."""
        if self.experts is not None:
            setattr(config, EXPERTS_FIELD, self.experts)
        return experts_of(config)

    # --- what a config may hold ----------------------------------------------------------------------
    def family_problems(self, config: PretrainedConfig) -> list[str]:
        found = []
        if float(getattr(config, "router_jitter_noise", 0.0) or 0.0) > 0:
            found.append(f"router_jitter_noise={config.router_jitter_noise} (random noise on the router input "
                         "in training: neither backend reproduces HF's draws)")
        if getattr(config, "attention_bias", False):
            found.append("attention_bias=True (q/k/v/o biases are not mapped for the MoE families)")
        if config.num_experts_per_tok > self.num_experts(config):
            found.append(f"num_experts_per_tok={config.num_experts_per_tok} > {self.num_experts(config)} experts")
        experts = getattr(config, EXPERTS_FIELD, None)
        if experts is not None and experts not in EXPERT_IMPLEMENTATIONS:
            found.append(f"{EXPERTS_FIELD}={experts!r} (the expert implementations: "
                         f"{', '.join(EXPERT_IMPLEMENTATIONS)})")
        return found

    def from_llama(self, config: PretrainedConfig, state: dict[str, Any]) -> tuple[PretrainedConfig, dict[str, Any]]:
        """Refused: a dense Llama's MLP is no set of experts and a router (Mistral's, Qwen3's housing aside)."""
        return Family.from_llama(self, config, state)

    # --- the plan ------------------------------------------------------------------------------------
    def moe_plan(self, config: PretrainedConfig, layer_idx: int, experts: str) -> MoEPlan | None:
        if not self.is_moe_layer(config, layer_idx):
            return None
        block = getattr(self.module(), self.hf_moe_block)
        return MoEPlan(num_experts=self.num_experts(config), top_k=config.num_experts_per_tok,
                       ffn_hidden_size=self.expert_size(config), renormalize=self.renormalizes(config),
                       scores_in_input_dtype=self.scores_in_input_dtype(), experts=experts,
                       hf_block=functools.partial(block, config))

    def layer_plan(self, config: PretrainedConfig, layer_idx: int) -> LayerPlan:
        experts = self.record_experts(config)
        plan = super().layer_plan(config, layer_idx)
        return replace(plan, moe=self.moe_plan(config, layer_idx, experts))

    def config_variants(self) -> list[PretrainedConfig]:
        """Both expert implementations, and a dense layer among MoE ones where the family has them."""
        found = []
        for config in self.shape_variants():
            for experts in EXPERT_IMPLEMENTATIONS:
                variant = copy.deepcopy(config)
                setattr(variant, EXPERTS_FIELD, experts)
                found.append(variant)
        return found

    def shape_variants(self) -> list[PretrainedConfig]:
        return [self.hf.config_class()()]

    # --- the mapping ---------------------------------------------------------------------------------
    def _kinds(self, config: PretrainedConfig) -> set[bool]:
        """Whether the layer asked about is MoE ({True}/{False}), or both kinds for every layer's union."""
        index = layer_index_of(config)
        if index is not None:
            return {self.is_moe_layer(config, index)}
        return {self.is_moe_layer(config, i) for i in range(config.num_hidden_layers)}

    def norm_rules(self, config: PretrainedConfig) -> list[Rule]:
        return [rules.rename("input_layernorm.weight", "self_attention.layernorm_qkv.layer_norm_weight"),
                rules.rename("post_attention_layernorm.weight", "post_attention_layernorm.weight")]

    def mlp_rules(self, config: PretrainedConfig) -> list[Rule]:
        kinds = self._kinds(config)
        found = []
        if False in kinds:  # a dense layer: fc1 = [gate; up]
            found += [rules.concat_rows(("mlp.gate_proj.weight", "mlp.up_proj.weight"), "mlp.fc1.weight"),
                      rules.rename("mlp.down_proj.weight", "mlp.fc2.weight")]
        if True in kinds:
            found += self.expert_rules(config)
        return found

    def expert_rules(self, config: PretrainedConfig) -> list[Rule]:
        if experts_of(config) == HF_EXPERTS:
            return [rules.rename(name, name) for name in
                    ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")]
        count = self.num_experts(config)
        return [rules.rename("mlp.gate.weight", "mlp.router.weight"),
                rules.split_experts("mlp.experts.gate_up_proj", [f"mlp.experts_fc1.weight{e}" for e in range(count)]),
                rules.split_experts("mlp.experts.down_proj", [f"mlp.experts_fc2.weight{e}" for e in range(count)])]


@functools.cache
def _variant(family: MoEFamily, experts: str) -> MoEFamily:
    variant = copy.copy(family)
    variant.experts = experts
    return variant
